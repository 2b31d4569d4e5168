"""Query templates: `{{ name }}` placeholders filled from a fixed set of variables.

A deliberately tiny language (no logic, no filters): an unknown name is an error the user
sees in status before any rollout starts, never a query silently sent with a hole in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VARIABLES = ("namespace", "target", "primary", "canary", "interval", "cohort")
# {{ cohort }} outside a cohort's own evaluation: a regular expression matching every label value.
ALL_COHORTS = ".*"
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class QueryVariables:
    namespace: str
    target: str
    interval: str  # a PromQL range, e.g. "60s"
    cohort: str = ALL_COHORTS  # a cohort's name when a gate is evaluated for that cohort alone

    @property
    def primary(self) -> str:
        return f"{self.target}-primary"

    @property
    def canary(self) -> str:
        # The user's Deployment is the canary during a rollout (DESIGN.md §3).
        return self.target

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in VARIABLES}


def unknown_variables(template: str, allowed: tuple[str, ...] = VARIABLES) -> list[str]:
    return sorted({name for name in _PLACEHOLDER.findall(template) if name not in allowed})


def uses_variable(template: str, name: str) -> bool:
    return name in _PLACEHOLDER.findall(template)


def render(template: str, variables: QueryVariables, extra: dict[str, str] | None = None) -> str:
    """Fill `template`; `extra` adds variables of one kind of query (a comparison's variant and window)."""
    values = {**variables.as_dict(), **(extra or {})}
    unknown = unknown_variables(template, tuple(values))
    if unknown:
        raise TemplateError(
            f"unknown template variable {', '.join(unknown)}; the variables are {', '.join(values)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
