"""A standby replica: with CANARIST_LEADER_ELECTION=true the operator acts only while it holds the
Lease (canarist.kube.leadership).

kopf starts no watch, timer or finalizer of any resource until every startup handler has finished
(kopf 1.45: `startup_cleanup_activities` runs the startup activity, then sets the flag that the
resource observers and the orchestrator of watches wait for; startup handlers run one after the
other in registration order). This handler is registered first (handlers/__init__.py) and
returns only once this process holds the lease, so a standby never reads a CanaryRelease, let
alone acts on one. Once it leads, two daemon threads renew the lease and leave the process
(`os._exit`) when a renewal has not succeeded within the renew deadline, before the lease can
expire for anyone else. At a clean exit (SIGTERM: kopf stops, the interpreter joins the handler
threads, then runs `atexit`) the lease is released so that a standby takes over at once.

kopf's own peering stays off (`--standalone`): it pauses operators by priority and is not leader
election.
"""

from __future__ import annotations

import asyncio
import atexit
import logging

import kopf

from canarist.kube.client import load_client
from canarist.kube.leadership import LeaderElector, config_from_env
from canarist.metrics import set_leader

LEASE_CLIENT_TIMEOUT = (2.0, 3.0)  # connect, read: a renewal attempt is over long before the renew deadline
_elector: LeaderElector | None = None


def elector() -> LeaderElector | None:
    """This process's elector, once leader election is on and the lease was acquired."""
    return _elector


@kopf.on.startup()
async def lead(logger: logging.Logger, **_) -> None:
    global _elector
    config = config_from_env()
    if config is None:
        logger.info("leader election is off (CANARIST_LEADER_ELECTION): this replica acts alone")
        return
    candidate = LeaderElector(config, load_client(timeout=LEASE_CLIENT_TIMEOUT))
    logger.info("leader election: %s waits for lease %s/%s (duration %gs, renew deadline %gs, retry %gs)",
                config.identity, config.namespace, config.name, config.lease_duration, config.renew_deadline,
                config.retry_period)
    while not await asyncio.to_thread(candidate.attempt):
        await asyncio.sleep(candidate.wait_in())
    candidate.run_renewal()
    atexit.register(candidate.release)
    _elector = candidate
    set_leader(True)
    logger.info("leader election: %s leads; starting to watch", config.identity)
