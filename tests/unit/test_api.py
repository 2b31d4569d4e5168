"""The CanaryRelease models, and their agreement with the committed CRD."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from canarist.analysis.templating import QueryVariables, TemplateError, render, unknown_variables
from canarist.api import crd
from canarist.api.durations import parse_duration, prometheus_duration
from canarist.api.spec import CanaryReleaseSpec
from canarist.api.status import CanaryReleaseStatus

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "canarist.dev_canaryreleases.yaml"

MINIMAL = {
    "targetRef": {"name": "web"},
    "service": {"port": 8080},
    "routing": {"gatewayAPI": {"parentRefs": [{"name": "gw"}]}},
}


def test_committed_crd_is_generated_from_the_models():
    assert CRD_FILE.read_text() == crd.render(), "run: make crds"


def test_defaults():
    spec = CanaryReleaseSpec.model_validate(MINIMAL)
    assert spec.steps == [1, 5, 20, 50, 100]
    assert spec.analysis.interval == "1m" and spec.analysis.failure_limit == 1
    assert spec.analysis.on_no_data == "Hold" and spec.analysis.on_error == "Hold"
    assert spec.suspend is False


@pytest.mark.parametrize("steps, message", [
    ([1, 5, 50], "steps must end at 100"),
    ([5, 1, 100], "steps must increase"),
    ([5, 5, 100], "steps must increase"),
    ([0, 100], "greater than or equal to 1"),
    ([], "at least 1 item"),
])
def test_bad_steps_are_rejected(steps, message):
    with pytest.raises(ValidationError, match=message):
        CanaryReleaseSpec.model_validate({**MINIMAL, "steps": steps})


def test_metric_needs_a_threshold_and_unique_name():
    metric = {"name": "e", "prometheus": {"query": "q"}}
    with pytest.raises(ValidationError, match="set min, max or both"):
        CanaryReleaseSpec.model_validate({**MINIMAL, "analysis": {"metrics": [metric]}})
    with pytest.raises(ValidationError, match="repeated: e"):
        CanaryReleaseSpec.model_validate({**MINIMAL, "analysis": {"metrics": [{**metric, "max": 1}] * 2}})
    with pytest.raises(ValidationError, match="min must not be greater than max"):
        CanaryReleaseSpec.model_validate({**MINIMAL, "analysis": {"metrics": [{**metric, "min": 2, "max": 1}]}})


def test_status_round_trips_and_tolerates_unknown_fields():
    status = CanaryReleaseStatus.model_validate({"phase": "Progressing", "canaryWeight": 5, "futureField": 1,
                                                 "revisions": {"primary": "a", "canary": "b"}})
    again = CanaryReleaseStatus.model_validate(status.to_k8s())
    assert again == status and "futureField" not in status.to_k8s()


def _crd_schema() -> dict:
    return yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _fields(schema: dict, prefix: str = "") -> set[str]:
    found = set()
    for name, prop in schema.get("properties", {}).items():
        found.add(prefix + name)
        found |= _fields(prop, f"{prefix}{name}.")
        if "items" in prop:
            found |= _fields(prop["items"], f"{prefix}{name}[].")
    return found


def test_crd_exposes_every_model_field_in_camel_case():
    fields = _fields(_crd_schema())
    for path in ("spec.targetRef.name", "spec.routing.gatewayAPI.parentRefs[].sectionName", "spec.steps",
                 "spec.analysis.failureLimit", "spec.analysis.metrics[].prometheus.address",
                 "spec.analysis.onNoData", "spec.analysis.minSamples.count", "spec.suspend",
                 "status.phase", "status.canaryWeight", "status.pinnedAnalysis.metrics[].max",
                 "status.lastChecks[].value", "status.conditions[].lastTransitionTime"):
        assert path in fields, path


def test_crd_carries_the_rules_types_cannot_express():
    spec = _crd_schema()["properties"]["spec"]["properties"]
    rules = {v["message"] for v in spec["steps"]["x-kubernetes-validations"]}
    assert rules == {"steps must end at 100", "steps must increase"}
    assert spec["steps"]["x-kubernetes-list-type"] == "set"
    metric = spec["analysis"]["properties"]["metrics"]["items"]
    assert {v["message"] for v in metric["x-kubernetes-validations"]} >= {"min must not be greater than max"}


def test_durations():
    assert parse_duration("1m30s").total_seconds() == 90
    assert parse_duration("500ms").total_seconds() == 0.5
    assert prometheus_duration("1m") == "60s"
    with pytest.raises(ValueError, match="30s"):
        parse_duration("30 seconds")


def test_templates():
    variables = QueryVariables(namespace="prod", target="web", interval="60s")
    query = 'sum(rate(x{namespace="{{ namespace }}",deployment=~"{{canary}}|{{ primary }}"}[{{ interval }}]))'
    assert render(query, variables) == 'sum(rate(x{namespace="prod",deployment=~"web|web-primary"}[60s]))'
    assert unknown_variables("{{ app }} {{ target }} {{ pod }}") == ["app", "pod"]
    with pytest.raises(TemplateError, match="unknown template variable app"):
        render("{{ app }}", variables)
