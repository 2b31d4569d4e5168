"""Every manifest under examples/ is accepted by the API server (server-side dry run)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# Argo CD's Application CRD, so the GitOps snippet is checked against the real schema. It comes
# from Argo CD's Go module, pinned in hack/tools/modules.txt and fetched by `make binaries`.
ARGOCD_MODULE = next(line.strip() for line in (ROOT / "hack" / "tools" / "modules.txt").read_text().splitlines()
                     if line.startswith("github.com/argoproj/argo-cd/"))


@pytest.fixture(scope="module")
def example_cluster(stack):
    kubectl = stack.cluster.kubectl
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "canarist.dev_canaryreleases.yaml"))
    module = json.loads(subprocess.run(["go", "mod", "download", "-json", ARGOCD_MODULE], capture_output=True,
                                       text=True, check=True, env={**os.environ, "GOFLAGS": "-mod=mod"}).stdout)
    kubectl("apply", "--server-side", "--force-conflicts", "-f",
            str(Path(module["Dir"]) / "manifests" / "crds" / "application-crd.yaml"))
    for crd in ("canaryreleases.canarist.dev", "applications.argoproj.io"):
        stack.cluster.wait_established(crd)
    for namespace in ("prod", "infra", "argocd"):
        if kubectl("get", "namespace", namespace, check=False).returncode != 0:
            kubectl("create", "namespace", namespace)
    return stack


def test_there_are_examples_of_each_kind():
    names = {p.name for p in EXAMPLES}
    assert {"minimal.yaml", "judge-gate.yaml", "custom-steps.yaml", "gateway.yaml", "argocd.yaml", "shadow.yaml",
            "cohorts.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted_by_server_side_dry_run(example_cluster, path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents, f"{path.name} holds no manifest"
    result = example_cluster.cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(documents), result.stdout
