"""Problems of a spec that the CRD schema cannot see, named by field path with the fix."""

from __future__ import annotations

from canarist.analysis.templating import VARIABLES, unknown_variables
from canarist.api.spec import CanaryReleaseSpec


def spec_problems(spec: CanaryReleaseSpec) -> list[str]:
    problems = []
    analysis = spec.analysis
    if not analysis.metrics and analysis.min_samples is None and analysis.judge is None:
        problems.append("spec.analysis: declares no gate; add metrics, minSamples or judge "
                        "(a step must not advance without evidence)")
    templates = [(f"spec.analysis.metrics[{i}].prometheus.query", m.prometheus.query)
                 for i, m in enumerate(spec.analysis.metrics)]
    if spec.analysis.min_samples is not None:
        templates.append(("spec.analysis.minSamples.query", spec.analysis.min_samples.query))
    for path, template in templates:
        unknown = unknown_variables(template)
        if unknown:
            names = ", ".join("{{ %s }}" % n for n in unknown)
            problems.append(f"{path}: unknown template variable {names}; use one of "
                            + ", ".join("{{ %s }}" % v for v in VARIABLES))
    return problems
