"""Kubernetes Events about a CanaryRelease, so `kubectl describe` and `kubectl get events` tell the story."""

from __future__ import annotations

import logging
from datetime import datetime

import kubernetes

from canarist.engine import Event

log = logging.getLogger(__name__)


def post_event(api: kubernetes.client.ApiClient, body: dict, event: Event, now: datetime, key: str) -> bool:
    """Post `event` once: its name is derived from `key`, so a tick replayed after a crash (same
    stored status, same transition) finds it already there instead of posting it twice. True when
    the event is there (posted now or before)."""
    meta = body["metadata"]
    stamp = now.isoformat().replace("+00:00", "Z")
    try:
        kubernetes.client.CoreV1Api(api).create_namespaced_event(meta["namespace"], {
            "metadata": {"name": f"{meta['name']}.{key}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "reason": event.reason, "message": event.message[:1024], "type": event.type,
            "source": {"component": "canarist"}, "reportingComponent": "canarist.dev/operator",
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        })
    except kubernetes.client.ApiException as exc:
        if exc.status == 409:
            return True  # posted by the same transition before a restart
        # An event is a courtesy; losing one must not stop a rollback.
        log.warning("could not post event %s: %s", event.reason, exc.reason)
        return False
    return True
