"""`kubectl apply` rejects invalid CanaryReleases with messages that name the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from canarist.api.gatewayapi_schema import SCHEMAS
from canarist.api.gatewayapi_vendor import CRD_FILE as HTTPROUTE_CRD_FILE, extract
from canarist.devstack.gatewayapi import gateway_api_crd_dir

pytestmark = pytest.mark.cluster

CRD = Path(__file__).resolve().parents[2] / "crds" / "canarist.dev_canaryreleases.yaml"

VALID = {
    "apiVersion": "canarist.dev/v1alpha1",
    "kind": "CanaryRelease",
    "metadata": {"name": "web"},
    "spec": {
        "targetRef": {"name": "web"},
        "service": {"port": 8080},
        "routing": {"gatewayAPI": {"parentRefs": [{"name": "gw"}]}},
        "analysis": {"interval": "30s", "metrics": [
            {"name": "error-rate", "prometheus": {"query": "sum(rate(x[1m]))"}, "max": 0.01}]},
    },
}


@pytest.fixture(scope="module")
def crd_installed(stack):
    stack.cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    stack.cluster.wait_established("canaryreleases.canarist.dev")


def apply(stack, namespace: str, manifest: dict):
    return stack.cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False)


def with_spec(**changes) -> dict:
    manifest = copy.deepcopy(VALID)
    for path, value in changes.items():
        node = manifest["spec"]
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        node[keys[-1]] = value
    return manifest


def test_valid_manifest_is_accepted_with_defaults(stack, namespace, crd_installed):
    result = apply(stack, namespace, VALID)
    assert result.returncode == 0, result.stderr
    stored = yaml.safe_load(stack.cluster.kubectl("get", "crel", "web", "-n", namespace, "-o", "yaml").stdout)
    assert stored["spec"]["steps"] == [1, 5, 20, 50, 100]
    assert stored["spec"]["analysis"]["failureLimit"] == 1


@pytest.mark.parametrize("changes, expected", [
    ({"steps": [1, 5, 50]}, ["spec.steps", "steps must end at 100"]),
    ({"steps": [20, 5, 100]}, ["spec.steps", "steps must increase"]),
    ({"steps": [0, 100]}, ["spec.steps[0]", "should be greater than or equal to 1"]),
    ({"steps": [5, 5, 100]}, ["spec.steps[1]", "Duplicate value"]),
    ({"service__port": 70000}, ["spec.service.port", "65535"]),
    ({"service__port": "http"}, ["spec.service.port", "integer"]),
    ({"analysis__interval": "soon"}, ["spec.analysis.interval", "should match"]),
    ({"analysis__onNoData": "Pass"}, ["spec.analysis.onNoData", "Unsupported value", "Hold", "Fail"]),
    ({"analysis__failureLimit": -1}, ["spec.analysis.failureLimit", "greater than or equal to 0"]),
    ({"analysis__metrics__0__max": None}, ["spec.analysis.metrics[0]", "set min, max or both"]),
    ({"routing__gatewayAPI__parentRefs": []}, ["spec.routing.gatewayAPI.parentRefs", "at least 1 items"]),
    ({"targetRef__kind": "StatefulSet"}, ["spec.targetRef.kind", "Unsupported value", "Deployment"]),
    ({"targetRef__name": "x" * 56}, ["spec.targetRef.name", "DNS-1035 label of at most 55 characters"]),
    ({"targetRef__name": "1web"}, ["spec.targetRef.name", "DNS-1035 label", "rename the Deployment"]),
    ({"routing__gatewayAPI__hostnames": ["ok.example.com", "Bot.example.com"]},
     ["spec.routing.gatewayAPI.hostnames[1]", "should match"]),
    ({"routing__gatewayAPI__parentRefs__0__kind": "1Gateway"},
     ["spec.routing.gatewayAPI.parentRefs[0].kind", "should match"]),
    ({"routing__gatewayAPI__parentRefs__0__sectionName": "HTTPS"},
     ["spec.routing.gatewayAPI.parentRefs[0].sectionName", "should match"]),
    ({"routing__gatewayAPI__parentRefs__0__group": "Gateway.Networking"},
     ["spec.routing.gatewayAPI.parentRefs[0].group", "should match"]),
    ({"routing__gatewayAPI__matches": [{}, {"path": {"type": "PathPrefix", "value": "chat"}}]},
     ["spec.routing.gatewayAPI.matches[1].path", "value must be an absolute path and start with '/'"]),
    ({"routing__gatewayAPI__matches": [{"path": {"type": "Exact", "value": "/a//b"}}]},
     ["spec.routing.gatewayAPI.matches[0].path", "must not contain '//'"]),
    ({"routing__gatewayAPI__matches": [{"headers": [{"name": "x canary", "value": "1"}]}]},
     ["spec.routing.gatewayAPI.matches[0].headers[0].name", "should match"]),
    ({"routing__gatewayAPI__matches": [{"headers": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]}]},
     ["spec.routing.gatewayAPI.matches[0].headers[1]", "Duplicate value"]),
    ({"routing__gatewayAPI__matches": [{"queryParams": [{"name": "beta"}]}]},
     ["spec.routing.gatewayAPI.matches[0].queryParams[0].value", "Required value"]),
    ({"routing__gatewayAPI__matches": [{"method": "get"}]},
     ["spec.routing.gatewayAPI.matches[0].method", "Unsupported value"]),
    ({"analysis__interval": "0s"}, ["spec.analysis.interval", "analysis.interval must be at least 1s"]),
    ({"analysis__interval": "0ms"}, ["spec.analysis.interval", "analysis.interval must be at least 1s"]),
    ({"analysis__interval": "500ms"}, ["spec.analysis.interval", "analysis.interval must be at least 1s"]),
    ({"analysis__holdTimeout": "0m"}, ["spec.analysis.holdTimeout", "analysis.holdTimeout must be greater than 0s"]),
    ({"analysis__judge": {"url": "http://judge", "minScore": 0.8, "timeout": "0s"}},
     ["spec.analysis.judge.timeout", "analysis.judge.timeout must be greater than 0s"]),
    ({"shadow": {"percent": 0}}, ["spec.shadow.percent", "greater than or equal to 1"]),
    ({"shadow": {"percent": 101}}, ["spec.shadow.percent", "less than or equal to 100"]),
    ({"shadow": {"mirror": "Envoy"}}, ["spec.shadow.mirror", "Unsupported value", "Route", "External"]),
    ({"shadow": {"minDuration": "soon"}}, ["spec.shadow.minDuration", "should match"]),
    ({"shadow": {"minPairs": -1}}, ["spec.shadow.minPairs", "greater than or equal to 0"]),
    # Cohorts: a match that is no valid HTTPRouteMatch, a repeated name, a contradictory split.
    ({"cohorts": [{"name": "de", "factor": 5, "matches": [{"headers": [{"name": "Accept Language", "value": "de"}]}]}]},
     ["spec.cohorts[0].matches[0].headers[0].name", "should match"]),
    ({"cohorts": [{"name": "de", "factor": 5, "matches": [{"headers": [{"name": "a", "type": "Prefix", "value": "d"}]}]}]},
     ["spec.cohorts[0].matches[0].headers[0].type", "Unsupported value"]),
    ({"cohorts": [{"name": "de", "factor": 5, "matches": [{}]}]},
     ["spec.cohorts[0].matches[0]", "needs at least one header or query parameter"]),
    ({"cohorts": [{"name": "de", "factor": 5, "matches": [{"headers": [{"name": "a", "value": "1"}]}]},
                  {"name": "de", "factor": 2, "matches": [{"headers": [{"name": "a", "value": "2"}]}]}]},
     ["spec.cohorts[1]", "Duplicate value"]),
    ({"cohorts": [{"name": "de", "matches": [{"headers": [{"name": "a", "value": "1"}]}]}]},
     ["spec.cohorts[0]", "set exactly one of factor"]),
    ({"cohorts": [{"name": "de", "steps": [5, 100], "matches": [{"headers": [{"name": "a", "value": "1"}]}]}]},
     ["spec.cohorts", "a cohort's steps need one entry per entry of spec.steps"]),
])
def test_invalid_manifests_are_rejected_naming_the_field(stack, namespace, crd_installed, changes, expected):
    manifest = with_spec(**changes)
    if changes == {"analysis__metrics__0__max": None}:
        del manifest["spec"]["analysis"]["metrics"][0]["max"]
    result = apply(stack, namespace, manifest)
    assert result.returncode != 0, f"accepted: {changes}"
    for text in expected:
        assert text in result.stderr, result.stderr


def test_gateway_routing_and_new_fields_are_accepted_with_gateway_defaults(stack, namespace, crd_installed):
    manifest = with_spec(routing={"gatewayAPI": {
        "parentRefs": [{"name": "gw", "namespace": "infra", "sectionName": "https", "group": "", "kind": "Service"}],
        "hostnames": ["bot.example.com", "*.example.com"],
        "matches": [{"path": {"type": "PathPrefix", "value": "/chat"}, "method": "POST"},
                    {"headers": [{"name": "x-canary", "value": "always"}],
                     "queryParams": [{"name": "b", "value": "1"}]}],
    }}, analysis__interval="1s", analysis__holdTimeout="1ms")
    result = apply(stack, namespace, manifest)
    assert result.returncode == 0, result.stderr
    stored = yaml.safe_load(stack.cluster.kubectl("get", "crel", "web", "-n", namespace, "-o", "yaml").stdout)
    assert stored["spec"]["service"]["adoptTargetService"] is True
    # Gateway API's defaults come with its schema: what canarist stores is what the HTTPRoute will hold.
    assert stored["spec"]["routing"]["gatewayAPI"]["matches"] == [
        {"path": {"type": "PathPrefix", "value": "/chat"}, "method": "POST"},
        {"path": {"type": "PathPrefix", "value": "/"},
         "headers": [{"name": "x-canary", "type": "Exact", "value": "always"}], "queryParams": [{"name": "b", "type": "Exact", "value": "1"}]}]


def test_a_malformed_duration_gets_one_error_not_a_cel_conversion_error(stack, namespace, crd_installed):
    result = apply(stack, namespace, with_spec(analysis__interval="soon"))
    assert result.returncode != 0 and "should match" in result.stderr, result.stderr
    assert "conversion error" not in result.stderr, result.stderr


def test_vendored_gateway_api_schemas_match_the_pinned_release():
    crd_file = gateway_api_crd_dir() / HTTPROUTE_CRD_FILE
    assert extract(yaml.safe_load(crd_file.read_text())) == SCHEMAS, "run: python -m canarist.api.gatewayapi_vendor"


def test_missing_required_field_is_named(stack, namespace, crd_installed):
    manifest = copy.deepcopy(VALID)
    del manifest["spec"]["service"]
    result = apply(stack, namespace, manifest)
    assert result.returncode != 0 and "spec.service: Required value" in result.stderr, result.stderr


def test_target_cannot_be_switched_on_an_existing_release(stack, namespace, crd_installed):
    assert apply(stack, namespace, VALID).returncode == 0
    moved = with_spec(targetRef={"name": "other"})
    result = apply(stack, namespace, moved)
    assert result.returncode != 0
    assert "targetRef.name is immutable; create a new CanaryRelease for another Deployment" in result.stderr
