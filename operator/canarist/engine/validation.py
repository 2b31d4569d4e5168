"""Problems of a spec that the CRD schema cannot see, named by field path with the fix."""

from __future__ import annotations

from canarist.analysis.templating import VARIABLES, unknown_variables
from canarist.api.compare import COMPARE_VARIABLES
from canarist.api.spec import CanaryReleaseSpec


def spec_problems(spec: CanaryReleaseSpec) -> list[str]:
    problems = []
    analysis = spec.analysis
    if not analysis.metrics and analysis.min_samples is None and analysis.judge is None and not analysis.compare:
        problems.append("spec.analysis: declares no gate; add compare, metrics, minSamples or judge "
                        "(a step must not advance without evidence)")
    templates = [(f"spec.analysis.metrics[{i}].prometheus.query", m.prometheus.query, VARIABLES)
                 for i, m in enumerate(spec.analysis.metrics)]
    if spec.analysis.min_samples is not None:
        templates.append(("spec.analysis.minSamples.query", spec.analysis.min_samples.query, VARIABLES))
    for i, gate in enumerate(spec.analysis.compare):
        if gate.rates is not None:
            templates += [(f"spec.analysis.compare[{i}].rates.{part}", getattr(gate.rates, part),
                           VARIABLES + COMPARE_VARIABLES) for part in ("bad", "total")]
    for path, template, allowed in templates:
        unknown = unknown_variables(template, allowed)
        if unknown:
            names = ", ".join("{{ %s }}" % n for n in unknown)
            problems.append(f"{path}: unknown template variable {names}; use one of "
                            + ", ".join("{{ %s }}" % v for v in allowed))
    return problems
