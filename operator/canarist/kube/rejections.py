"""Writes the API server refuses because of what the spec or the target asks for.

Such a write can never succeed by retrying: it is surfaced within one tick as `Ready=False`
naming the spec field and the fix, and not re-sent every tick until the CanaryRelease or the
target changes. A refusal for permissions (403) is retried after a while, since RBAC and
admission policies change on their own (a chart being installed, say).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from kubernetes.client import ApiException

from canarist.engine import Action, EnsureApex, EnsurePrimary, EnsureServices, ScaleCanary, SetRoute

# 400 Bad Request, 403 Forbidden (RBAC or a policy), 422 Invalid: retrying the same write won't help.
REJECTED = (400, 403, 422)
FORBIDDEN_RETRY_SECONDS = 30.0


def is_rejection(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status in REJECTED


def retry_after(exc: ApiException) -> float | None:
    """None: until the spec or the target changes."""
    return FORBIDDEN_RETRY_SECONDS if exc.status == 403 else None


def api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "")["message"])[:500]
    except (ValueError, KeyError, TypeError):
        return f"{exc.status} {exc.reason}"


def describe(action: Action, exc: ApiException, namespace: str, target: str) -> str:
    """The refusal in the user's terms: which field of theirs leads to it, and what to change."""
    why = api_message(exc)
    if exc.status == 403:
        return (f"the operator is not allowed to write for {type(action).__name__}: {why}; grant its "
                f"ServiceAccount the permission (see the Helm chart's RBAC)")
    if isinstance(action, SetRoute):
        return (f"spec.routing.gatewayAPI: the API server rejected HTTPRoute {namespace}/{target}: {why}; "
                f"fix spec.routing.gatewayAPI")
    if isinstance(action, EnsureServices):
        return (f"spec.service: the API server rejected Service {target}-primary or {target}-canary: {why}; "
                f"fix spec.service or the selector of Deployment {target!r}")
    if isinstance(action, EnsurePrimary):
        return (f"spec.targetRef.name: the API server rejected Deployment {target}-primary (a copy of the pod "
                f"template of Deployment {target!r}): {why}; fix Deployment {target!r}")
    if isinstance(action, EnsureApex):
        return (f"spec.service.adoptTargetService: the API server rejected the update of Service {target!r}: "
                f"{why}; fix that Service or set spec.service.adoptTargetService to false")
    if isinstance(action, ScaleCanary):
        return f"spec.targetRef.name: scaling Deployment {target!r} was rejected: {why}; fix Deployment {target!r}"
    return f"the API server rejected {type(action).__name__}: {why}"


@dataclass
class Rejection:
    key: tuple
    message: str
    expires: float | None = None  # monotonic time; None: until the key changes


class Rejections:
    """Per release (by uid), the last refused write and what it depended on."""

    def __init__(self) -> None:
        self._by_release: dict[str, Rejection] = {}

    def record(self, uid: str, key: tuple, message: str, retry_after: float | None = None) -> None:
        expires = time.monotonic() + retry_after if retry_after is not None else None
        self._by_release[uid] = Rejection(key, message, expires)

    def active(self, uid: str, key: tuple) -> str | None:
        rejection = self._by_release.get(uid)
        if rejection is None:
            return None
        if rejection.key != key or (rejection.expires is not None and time.monotonic() > rejection.expires):
            del self._by_release[uid]
            return None
        return rejection.message

    def forget(self, uid: str) -> None:
        self._by_release.pop(uid, None)
