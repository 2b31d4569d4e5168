"""The Gateway API CRDs (standard channel) for the local cluster.

The YAML comes from the `sigs.k8s.io/gateway-api` Go module pinned in hack/tools/gateway-api:
`go mod download` puts it in the Go module cache (from the Go module proxy, checked against
go.sum), so the CRDs are versioned and verified like the cluster binaries, with no other download.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

from .binaries import REPO_ROOT

GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"
# Must match the require line in hack/tools/gateway-api/go.mod (a unit test checks it).
GATEWAY_API_VERSION = "v1.4.1"
TOOL_DIR = REPO_ROOT / "hack" / "tools" / "gateway-api"
FIELD_MANAGER = "canarist-devstack"

Kubectl = Callable[..., subprocess.CompletedProcess]


@functools.cache
def gateway_api_module_dir() -> Path:
    """The module's directory in the Go module cache, downloading it the first time."""
    go = shutil.which("go")
    if not go:
        raise RuntimeError("the Go toolchain is needed to fetch the Gateway API CRDs (install Go >= 1.26)")
    if not (TOOL_DIR / "go.mod").exists():
        raise RuntimeError(f"{TOOL_DIR}/go.mod not found: the local stack needs a canarist checkout")
    # GOWORK=off: a go.work somewhere above the checkout must not change what gets resolved.
    env = {**os.environ, "GOWORK": "off"}
    result = subprocess.run([go, "mod", "download", "-json", f"{GATEWAY_API_MODULE}@{GATEWAY_API_VERSION}"],
                            cwd=TOOL_DIR, env=env, capture_output=True, text=True, timeout=300)
    # With -json, go reports a failed download in the "Error" field, on stdout.
    info = json.loads(result.stdout) if result.stdout.strip() else {}
    if result.returncode != 0 or info.get("Error") or not info.get("Dir"):
        raise RuntimeError(f"go mod download {GATEWAY_API_MODULE}@{GATEWAY_API_VERSION} failed "
                           f"({result.returncode}): {info.get('Error') or result.stderr.strip()}")
    return Path(info["Dir"])


def gateway_api_crd_dir() -> Path:
    """config/crd/standard of the pinned Gateway API release: the standard-channel CRDs."""
    directory = gateway_api_module_dir() / "config" / "crd" / "standard"
    if not (directory / "gateway.networking.k8s.io_httproutes.yaml").exists():
        raise RuntimeError(f"{directory} holds no HTTPRoute CRD; is {GATEWAY_API_VERSION} a Gateway API release?")
    return directory


def crd_files() -> list[Path]:
    # The kustomization.yaml next to them (if any) is not a manifest.
    return sorted(p for p in gateway_api_crd_dir().glob("*.yaml") if p.name != "kustomization.yaml")


def crd_names(files: list[Path]) -> list[str]:
    names = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                names.append(doc["metadata"]["name"])
    return names


def install_gateway_api_crds(kubectl: Kubectl, timeout_seconds: int = 60) -> None:
    """Apply the standard-channel CRDs and wait until they are Established. Idempotent.

    `kubectl` runs kubectl against the target cluster and raises CalledProcessError on failure,
    like `LocalCluster.kubectl`.
    """
    files = crd_files()
    names = crd_names(files)
    # Server-side apply: re-applying is a no-op, and --force-conflicts takes the fields over from
    # an earlier client-side install instead of failing.
    apply = ["apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}"]
    for path in files:
        apply += ["-f", str(path)]
    _run(kubectl, *apply)
    _run(kubectl, "wait", "--for=condition=Established", f"--timeout={timeout_seconds}s",
         *(f"crd/{name}" for name in names))


def _run(kubectl: Kubectl, *args: str) -> subprocess.CompletedProcess:
    try:
        return kubectl(*args)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"kubectl {' '.join(args[:2])} of the Gateway API CRDs failed ({exc.returncode}): "
                           f"{(exc.stderr or exc.stdout or '').strip()}") from exc
