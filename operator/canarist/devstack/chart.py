"""The Helm chart on the local stack, and the operator's identity as the chart creates it.

The end-to-end tests and the demo run the operator process with `operator_kubeconfig(...)`, so it
authenticates with the chart's ServiceAccount and gets exactly the chart's RBAC: a permission the
operator needs and the chart does not grant fails (the admin kubeconfig would hide it).
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import yaml

from .binaries import REPO_ROOT

CHART = REPO_ROOT / "charts" / "canarist"
CRD_NAME = "canaryreleases.canarist.dev"
TOKEN_DURATION = "2h"


def helm(stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The stack's helm against the stack's cluster, with its caches and config under the stack's workdir."""
    home = stack.cluster.workdir / "helm"
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data"), "KUBECONFIG": str(stack.kubeconfig)}
    result = subprocess.run([str(stack.cluster.bin_dir / "helm"), "--kubeconfig", str(stack.kubeconfig), *args],
                            capture_output=True, text=True, env=env, timeout=180)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def crd_installed(stack) -> bool:
    return stack.cluster.kubectl("get", "crd", CRD_NAME, check=False).returncode == 0


def install_chart(stack, namespace: str, release: str, *values: str) -> subprocess.CompletedProcess:
    """`helm install` the chart into `namespace`; `values` are extra helm flags (--set ..., -f ...).

    CRDs are cluster-wide and other tests may have applied the CanaryRelease CRD already; helm
    then must not touch it (--skip-crds). Otherwise helm installs it from the chart's crds/.
    """
    skip = ["--skip-crds"] if crd_installed(stack) else []
    return helm(stack, "install", release, str(CHART), "--namespace", namespace, *skip, *values)


def uninstall_chart(stack, namespace: str, release: str) -> None:
    helm(stack, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "90s", check=False)


def operator_service_account(stack, namespace: str, release_name: str) -> str:
    """The ServiceAccount the release's operator Deployment runs as."""
    out = stack.cluster.kubectl(
        "get", "deployments", "-n", namespace,
        "-l", f"app.kubernetes.io/instance={release_name},app.kubernetes.io/component=operator",
        "-o", "jsonpath={.items[*].spec.template.spec.serviceAccountName}").stdout.split()
    if len(out) != 1:
        raise AssertionError(f"expected one operator Deployment of release {release_name!r} in {namespace!r}, "
                             f"found ServiceAccounts {out}")
    return out[0]


def operator_kubeconfig(stack, namespace: str, release_name: str) -> Path:
    """A kubeconfig that authenticates as the operator ServiceAccount of the chart release."""
    sa = operator_service_account(stack, namespace, release_name)
    return serviceaccount_kubeconfig(stack, namespace, sa, f"{namespace}-{release_name}")


def serviceaccount_token(stack, namespace: str, sa: str, *, audience: str | None = None,
                         duration: str = TOKEN_DURATION) -> str:
    """A token of the ServiceAccount from the TokenRequest API (`kubectl create token`)."""
    args = ["create", "token", sa, "-n", namespace, f"--duration={duration}"]
    if audience:
        args.append(f"--audience={audience}")
    token = stack.cluster.kubectl(*args).stdout.strip()
    if not token:
        raise AssertionError(f"kubectl create token {sa} -n {namespace} returned no token")
    return token


def serviceaccount_kubeconfig(stack, namespace: str, sa: str, file_name: str) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount `sa` of `namespace`.

    The token comes from the TokenRequest API (valid 2 hours); server and CA come from the stack's
    admin kubeconfig. Nothing of the admin's credentials is copied.
    """
    token = serviceaccount_token(stack, namespace, sa)

    admin = yaml.safe_load(Path(stack.kubeconfig).read_text())
    context_name = admin.get("current-context") or admin["contexts"][0]["name"]
    context = next(c["context"] for c in admin["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in admin["clusters"] if c["name"] == context["cluster"])
    ca_data = cluster.get("certificate-authority-data")
    if not ca_data:
        ca_path = Path(cluster["certificate-authority"])
        if not ca_path.is_absolute():
            ca_path = Path(stack.kubeconfig).parent / ca_path
        ca_data = base64.b64encode(ca_path.read_bytes()).decode()

    user = f"system:serviceaccount:{namespace}:{sa}"
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "canarist", "cluster": {"server": cluster["server"],
                                                      "certificate-authority-data": ca_data}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "canarist", "user": user, "namespace": namespace}}],
        "current-context": "operator",
    }
    # Under the cluster's workdir: removed with the stack, never in the repository.
    path = stack.cluster.workdir / "identities" / f"{file_name}.kubeconfig"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config))
    return path
