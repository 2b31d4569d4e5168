"""The operator's /metrics (canarist.metrics): CANARIST_METRICS_PORT turns it on, on every replica.

Registered before leadership's startup handler (handlers/__init__.py), which blocks a standby until
it holds the lease: a standby serves /metrics too, with canarist_leader 0, so that a missing leader
is visible. CANARIST_METRICS_ADDR is the address to bind (default 0.0.0.0, every interface).
"""

from __future__ import annotations

import logging
import os

import kopf

from canarist import metrics
from canarist.kube.leadership import ElectionError, config_from_env


@kopf.on.startup()
def serve_metrics(logger: logging.Logger, **_) -> None:
    try:
        electing = config_from_env() is not None
    except ElectionError:
        electing = True  # leadership's own startup handler reports the misconfiguration
    # Without leader election this process acts alone; with it, leadership sets 1 once it leads.
    metrics.set_leader(not electing)
    port = os.environ.get("CANARIST_METRICS_PORT", "").strip()
    if not port:
        logger.info("operator metrics are off (CANARIST_METRICS_PORT is not set)")
        return
    addr = os.environ.get("CANARIST_METRICS_ADDR", "").strip() or "0.0.0.0"
    metrics.start_server(int(port), addr=addr)
    logger.info("operator metrics on http://%s:%s/metrics", addr, port)
