"""Problems of a spec that the CRD schema cannot see, named by field path with the fix."""

from __future__ import annotations

import re

from canarist.analysis.templating import VARIABLES, unknown_variables
from canarist.api.cohorts import cohort_problems
from canarist.api.compare import COMPARE_VARIABLES
from canarist.api.spec import Analysis, CanaryReleaseSpec


# A label matcher `="{{ cohort }}"` or `!="{{ cohort }}"`: never true for ".*", the all-traffic value.
_COHORT_EQUALS = re.compile(r'(?<![=!]~)(?:!=|=)\s*"\{\{\s*cohort\s*\}\}"')


def spec_problems(spec: CanaryReleaseSpec) -> list[str]:
    problems = _analysis_problems(spec.analysis, "spec.analysis")
    shadow = spec.shadow
    if shadow is not None:
        if shadow.analysis is not None:
            problems += _analysis_problems(shadow.analysis, "spec.shadow.analysis")
        analysis = shadow.analysis or spec.analysis
        if shadow.min_pairs and analysis.judge is None and not any(g.judge for g in analysis.compare):
            where = "spec.shadow.analysis" if shadow.analysis is not None else "spec.analysis"
            problems.append(f"spec.shadow.minPairs: {shadow.min_pairs} judged pairs are counted by the judge, and "
                            f"{where} has no judge; add {where}.judge (or a compare gate with judge), or set "
                            "minPairs: 0")
    problems += cohort_problems(spec)
    return problems


def _analysis_problems(analysis: Analysis, path: str) -> list[str]:
    problems = []
    if not analysis.metrics and analysis.min_samples is None and analysis.judge is None and not analysis.compare:
        problems.append(f"{path}: declares no gate; add compare, metrics, minSamples or judge "
                        "(a step must not advance without evidence)")
    templates = [(f"{path}.metrics[{i}].prometheus.query", m.prometheus.query, VARIABLES)
                 for i, m in enumerate(analysis.metrics)]
    if analysis.min_samples is not None:
        templates.append((f"{path}.minSamples.query", analysis.min_samples.query, VARIABLES))
    for i, gate in enumerate(analysis.compare):
        if gate.rates is not None:
            templates += [(f"{path}.compare[{i}].rates.{part}", getattr(gate.rates, part),
                           VARIABLES + COMPARE_VARIABLES) for part in ("bad", "total")]
    for path, template, allowed in templates:
        if _COHORT_EQUALS.search(template):
            problems.append(f'{path}: {{{{ cohort }}}} is ".*" when the gate judges all traffic together, which only '
                            'a regular-expression matcher reads as every cohort; write cohort=~"{{ cohort }}"')
        unknown = unknown_variables(template, allowed)
        if unknown:
            names = ", ".join("{{ %s }}" % n for n in unknown)
            problems.append(f"{path}: unknown template variable {names}; use one of "
                            + ", ".join("{{ %s }}" % v for v in allowed))
    return problems
