"""The CanaryRelease models, and their agreement with the committed CRD."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from canarist.analysis.templating import QueryVariables, TemplateError, render, unknown_variables
from canarist.api import crd
from canarist.api.durations import parse_duration, prometheus_duration
from canarist.api.gatewayapi import HTTPRouteMatch
from canarist.api.gatewayapi_schema import SCHEMAS
from canarist.api.gatewayapi_vendor import extract
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


def _error(spec: dict) -> str:
    """The operator's one-line rendering of a validation error: "spec.<field path>: <message>"."""
    with pytest.raises(ValidationError) as caught:
        CanaryReleaseSpec.model_validate(spec)
    return "; ".join("spec" + "".join(f"[{loc}]" if isinstance(loc, int) else f".{loc}" for loc in e["loc"])
                     + ": " + e["msg"] for e in caught.value.errors())


def _with(path: str, value, base: dict = MINIMAL) -> dict:
    """A copy of `base` with `value` at a dotted path (digits index lists)."""
    spec = copy.deepcopy(base)
    node, keys = spec, path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    node[keys[-1]] = value
    return spec


@pytest.mark.parametrize("name", ["web", "a", "a-1", "x" * 55])
def test_target_names_that_fit_a_service_name_are_accepted(name):
    assert CanaryReleaseSpec.model_validate(_with("targetRef.name", name)).target_ref.name == name


@pytest.mark.parametrize("name", ["x" * 56, "1web", "web-", "Web", "web.v2", "-web"])
def test_target_name_must_leave_room_for_the_primary_service(name):
    message = _error(_with("targetRef.name", name))
    assert message.startswith("spec.targetRef.name: ")
    assert "DNS-1035 label of at most 55 characters" in message and "<name>-primary" in message


def test_adopt_target_service_defaults_to_true():
    assert CanaryReleaseSpec.model_validate(MINIMAL).service.adopt_target_service is True
    spec = CanaryReleaseSpec.model_validate(_with("service.adoptTargetService", False))
    assert spec.service.adopt_target_service is False and spec.to_k8s()["service"]["adoptTargetService"] is False


@pytest.mark.parametrize("hostname", ["bot.example.com", "*.example.com", "localhost", "a" * 63 + ".b"])
def test_gateway_hostnames_are_accepted(hostname):
    CanaryReleaseSpec.model_validate(_with("routing.gatewayAPI.hostnames", [hostname]))


@pytest.mark.parametrize("hostname", ["Bot.example.com", "bot.example.com.", "*", "a.*.com", "bot_1.example.com",
                                      "", "a" * 254])
def test_bad_gateway_hostnames_are_rejected(hostname):
    assert _error(_with("routing.gatewayAPI.hostnames", ["ok.example.com", hostname])).startswith(
        "spec.routing.gatewayAPI.hostnames[1]: ")


@pytest.mark.parametrize("field, value", [
    ("group", ""), ("group", "gateway.networking.k8s.io"), ("kind", "Service"), ("sectionName", "https"),
    ("sectionName", "listener.a"), ("namespace", "infra"), ("port", 443)])
def test_parent_ref_fields_as_gateway_api_accepts_them(field, value):
    CanaryReleaseSpec.model_validate(_with(f"routing.gatewayAPI.parentRefs.0.{field}", value))


@pytest.mark.parametrize("field, value", [
    ("group", "Gateway.Networking"), ("group", "x" * 254), ("kind", "1Gateway"), ("kind", ""), ("kind", "k" * 64),
    ("sectionName", "HTTPS"), ("sectionName", ""), ("namespace", "Infra"), ("namespace", ""), ("name", ""),
    ("port", 0)])
def test_bad_parent_ref_fields_are_rejected_naming_the_field(field, value):
    assert _error(_with(f"routing.gatewayAPI.parentRefs.0.{field}", value)).startswith(
        f"spec.routing.gatewayAPI.parentRefs[0].{field}: ")


def test_parent_ref_constraints_are_gateway_apis():
    ours = _crd_schema()["properties"]["spec"]["properties"]["routing"]["properties"]["gatewayAPI"]["properties"]
    constraints = ("pattern", "minLength", "maxLength", "minimum", "maximum", "type")
    for name, theirs in SCHEMAS["ParentReference"]["properties"].items():
        mine = ours["parentRefs"]["items"]["properties"][name]
        assert {k: mine.get(k) for k in constraints} == {k: theirs.get(k) for k in constraints}, name
    hostname = ours["hostnames"]["items"]
    assert {k: hostname.get(k) for k in constraints} == {k: SCHEMAS["Hostname"].get(k) for k in constraints}


GOOD_MATCHES = [
    {},
    {"path": {"type": "PathPrefix", "value": "/chat"}},
    {"path": {"type": "Exact", "value": "/v1/chat/completions"}, "method": "POST"},
    {"path": {"type": "RegularExpression", "value": "^/v[0-9]+//x"}},
    {"headers": [{"name": "x-canary", "value": "always"}, {"name": "X-Tier", "type": "RegularExpression",
                                                          "value": "gold|silver"}]},
    {"queryParams": [{"name": "beta", "value": "1"}]},
]


@pytest.mark.parametrize("match", GOOD_MATCHES)
def test_gateway_matches_are_accepted_and_kept_verbatim(match):
    spec = CanaryReleaseSpec.model_validate(_with("routing.gatewayAPI.matches", [match]))
    assert spec.routing.gateway_api.matches == [match]  # the router copies them into the HTTPRoute as they are


@pytest.mark.parametrize("match, where, message", [
    ({"path": {"value": "chat"}}, "path", "value must be an absolute path and start with '/'"),
    ({"path": {"type": "Exact", "value": "/a//b"}}, "path", "must not contain '//'"),
    ({"path": {"value": "/a/../b"}}, "path", "must not contain '/../'"),
    ({"path": {"value": "/a/."}}, "path", "must not end with '/.'"),
    ({"path": {"value": "/a b"}}, "path", "must only contain valid characters"),
    ({"path": {"type": "Regex", "value": "/"}}, "path.type", "'Exact', 'PathPrefix' or 'RegularExpression'"),
    ({"path": {"value": "/" * 1025}}, "path.value", "at most 1024 characters"),
    ({"headers": [{"name": "x canary", "value": "1"}]}, "headers[0].name", "should match pattern"),
    ({"headers": [{"name": "x-canary"}]}, "headers[0].value", "Field required"),
    ({"headers": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]}, "headers", "repeated: a"),
    ({"headers": [{"name": "a", "value": "1", "type": "Prefix"}]}, "headers[0].type", "'Exact' or"),
    ({"queryParams": [{"name": "beta", "value": ""}]}, "queryParams[0].value", "at least 1 character"),
    ({"method": "get"}, "method", "'GET'"),
    ({"pathPrefix": "/chat"}, "pathPrefix", "Extra inputs are not permitted"),
])
def test_bad_gateway_matches_are_rejected_naming_the_field(match, where, message):
    error = _error(_with("routing.gatewayAPI.matches", [{}, match]))
    assert error.startswith(f"spec.routing.gatewayAPI.matches[1].{where}: ") and message in error, error


def test_http_route_match_is_a_reusable_model():
    match = HTTPRouteMatch.model_validate({"path": {"value": "/chat"}, "queryParams": [{"name": "a", "value": "b"}]})
    assert match.path is not None and match.path.type == "PathPrefix"
    assert match.to_k8s() == {"path": {"type": "PathPrefix", "value": "/chat"},
                              "queryParams": [{"name": "a", "type": "Exact", "value": "b"}]}


def test_crd_describes_matches_with_gateway_apis_own_schema():
    gateway = _crd_schema()["properties"]["spec"]["properties"]["routing"]["properties"]["gatewayAPI"]
    assert gateway["properties"]["matches"]["items"] == SCHEMAS["HTTPRouteMatch"]
    path = SCHEMAS["HTTPRouteMatch"]["properties"]["path"]
    assert any("start with '/'" in rule["message"] for rule in path["x-kubernetes-validations"])


def test_vendored_schemas_are_extracted_from_the_httproute_crd():
    crd_doc = {"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {"properties": {"spec": {
        "properties": {"rules": {"items": {"properties": {"matches": {"items": {"m": 1}}}}},
                       "parentRefs": {"items": {"p": 1}}, "hostnames": {"items": {"h": 1}}}}}}}}]}}
    assert extract(crd_doc) == {"HTTPRouteMatch": {"m": 1}, "ParentReference": {"p": 1}, "Hostname": {"h": 1}}


WITH_JUDGE = _with("analysis.judge", {"url": "http://judge", "minScore": 0.8})


@pytest.mark.parametrize("path, value, message", [
    ("analysis.interval", "0s", "analysis.interval must be at least 1s"),
    ("analysis.interval", "0m", "analysis.interval must be at least 1s"),
    ("analysis.interval", "0ms", "analysis.interval must be at least 1s"),
    ("analysis.interval", "999ms", "analysis.interval must be at least 1s"),
    ("analysis.holdTimeout", "0s", "analysis.holdTimeout must be greater than 0s"),
    ("analysis.holdTimeout", "0h0m", "analysis.holdTimeout must be greater than 0s"),
    ("analysis.judge.timeout", "0ms", "analysis.judge.timeout must be greater than 0s"),
])
def test_zero_durations_are_rejected(path, value, message):
    error = _error(_with(path, value, WITH_JUDGE))
    assert error.startswith(f"spec.{path}: ") and message in error, error


@pytest.mark.parametrize("path, value", [
    ("analysis.interval", "1s"), ("analysis.interval", "1.5m"), ("analysis.holdTimeout", "1ms"),
    ("analysis.judge.timeout", "500ms")])
def test_short_but_positive_durations_are_accepted(path, value):
    CanaryReleaseSpec.model_validate(_with(path, value, WITH_JUDGE))


def test_duration_rules_are_cel_rules_too():
    analysis = _crd_schema()["properties"]["spec"]["properties"]["analysis"]["properties"]
    rules = [analysis[name]["x-kubernetes-validations"][0]["rule"] for name in ("interval", "holdTimeout")]
    rules.append(analysis["judge"]["properties"]["timeout"]["x-kubernetes-validations"][0]["rule"])
    assert [rule.split(" || ")[1] for rule in rules] == [
        "duration(self) >= duration('1s')", "duration(self) > duration('0s')", "duration(self) > duration('0s')"]


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
