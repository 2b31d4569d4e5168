"""`kubectl apply` rejects invalid CanaryReleases with messages that name the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

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
    stack.cluster.kubectl("wait", "--for=condition=Established", "crd/canaryreleases.canarist.dev", "--timeout=30s")


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
])
def test_invalid_manifests_are_rejected_naming_the_field(stack, namespace, crd_installed, changes, expected):
    manifest = with_spec(**changes)
    if changes == {"analysis__metrics__0__max": None}:
        del manifest["spec"]["analysis"]["metrics"][0]["max"]
    result = apply(stack, namespace, manifest)
    assert result.returncode != 0, f"accepted: {changes}"
    for text in expected:
        assert text in result.stderr, result.stderr


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
