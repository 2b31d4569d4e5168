"""ServiceAccounts for tests and benchmarks of the judge's authentication (canarist.judge.auth)."""

from __future__ import annotations

import uuid

import kubernetes


def create_service_accounts(api: kubernetes.client.ApiClient, accounts: dict[str, str]) -> None:
    """Create each ServiceAccount {name: namespace}; the namespaces must exist."""
    core = kubernetes.client.CoreV1Api(api)
    for name, namespace in accounts.items():
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})


def grant_token_review(api: kubernetes.client.ApiClient, namespace: str, service_account: str) -> str:
    """Bind the ServiceAccount to system:auth-delegator, as the chart binds the judge; returns the
    binding's name (cluster-scoped: delete it with `revoke_token_review`)."""
    name = f"canarist-judge-tokenreview-{uuid.uuid4().hex[:8]}"
    kubernetes.client.RbacAuthorizationV1Api(api).create_cluster_role_binding({
        "metadata": {"name": name, "labels": {"canarist.dev/test": "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]})
    return name


def revoke_token_review(api: kubernetes.client.ApiClient, binding: str) -> None:
    kubernetes.client.RbacAuthorizationV1Api(api).delete_cluster_role_binding(binding)
