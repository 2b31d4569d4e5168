"""Leader election on a coordination.k8s.io/v1 Lease, so that a standby replica can wait safely.

The pattern is client-go's `leaderelection` (the one controller-runtime uses), written again for
the operator's thread-based Kubernetes client:

- **Acquire.** A candidate reads the Lease. Absent: it creates it naming itself. Held by another
  holder: it may take it only once the holder's lease has expired, and expiry is judged on the
  candidate's *own* clock: the lease counts from when this candidate first saw its current record
  (resourceVersion), never from the renewTime written by another machine's clock. Taking it over
  is a replace with the resourceVersion that was read, so of two candidates racing for one expired
  lease the API server lets exactly one win (the other gets 409 Conflict).
- **Renew.** The leader rewrites renewTime every `retry_period` (replace with resourceVersion,
  too: a lease someone else took in the meantime is never overwritten).
- **Stop.** A leader that has not renewed for `renew_deadline`, counted from the *start* of its
  last successful renewal, must stop acting. As renew_deadline < lease_duration, and another
  candidate counts lease_duration from a moment no earlier than that renewal reached the API
  server, the old leader has stopped before anyone else may start. Stopping is leaving the
  process (`os._exit`): kopf's handlers run in threads that cannot be cancelled; the pod restarts
  and comes back as a standby.

With the defaults (10 s / 7 s / 2 s) a standby takes over at most ~12 s after the leader's last
renewal: it wakes at the exact moment the lease it watches expires instead of at its next poll.

The decisions (is the lease expired, may I take it, must I stop, when to try next) are pure
functions of a record and a clock reading, unit-tested with a fake clock; `LeaderElector` does the
I/O around them.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import kubernetes
from kubernetes.client import ApiException

log = logging.getLogger(__name__)

SERVICEACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_LEASE_NAME = "canarist-operator"
LOST_EXIT_CODE = 3  # the process leaves with this code when it loses the lease


class ElectionError(Exception):
    """Leader election is asked for but cannot work as configured."""


# -- configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElectionConfig:
    name: str
    namespace: str
    identity: str
    lease_duration: float = 10.0  # how long a lease is good for after its last renewal
    renew_deadline: float = 7.0  # a leader not renewed for this long stops acting
    retry_period: float = 2.0  # between two renewals, or two attempts of a standby

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ElectionError(f"leader election needs 0 < retryPeriod ({self.retry_period:g}s) < renewDeadline "
                                f"({self.renew_deadline:g}s) < leaseDuration ({self.lease_duration:g}s)")
        if not self.name or not self.namespace or not self.identity:
            raise ElectionError("leader election needs a lease name, a namespace and an identity")


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes", "on")


def own_identity(env: dict[str, str]) -> str:
    """The pod's name (downward API, POD_NAME) or the hostname, and a random suffix: a restarted
    process is another candidate than the one that held the lease before."""
    return f"{env.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


def config_from_env(env: dict[str, str] | None = None,
                    serviceaccount_namespace: Path = SERVICEACCOUNT_NAMESPACE) -> ElectionConfig | None:
    """CANARIST_LEADER_ELECTION=true turns it on (off: None). The lease is CANARIST_LEASE_NAME
    (default canarist-operator) in CANARIST_LEASE_NAMESPACE, else the pod's namespace (POD_NAMESPACE,
    else the ServiceAccount's namespace file). CANARIST_LEASE_DURATION / _RENEW_DEADLINE /
    _RETRY_PERIOD (seconds) override the timings."""
    env = dict(os.environ if env is None else env)
    if not _flag(env.get("CANARIST_LEADER_ELECTION")):
        return None
    namespace = env.get("CANARIST_LEASE_NAMESPACE") or env.get("POD_NAMESPACE")
    if not namespace and serviceaccount_namespace.is_file():
        namespace = serviceaccount_namespace.read_text().strip()
    if not namespace:
        raise ElectionError("CANARIST_LEADER_ELECTION is on but the lease's namespace is unknown: set "
                            "CANARIST_LEASE_NAMESPACE or POD_NAMESPACE")
    timings = {}
    for field_name, var in (("lease_duration", "CANARIST_LEASE_DURATION"),
                            ("renew_deadline", "CANARIST_RENEW_DEADLINE"),
                            ("retry_period", "CANARIST_RETRY_PERIOD")):
        if env.get(var):
            try:
                timings[field_name] = float(env[var])
            except ValueError:
                raise ElectionError(f"{var}={env[var]!r} is not a number of seconds") from None
    return ElectionConfig(name=env.get("CANARIST_LEASE_NAME") or DEFAULT_LEASE_NAME, namespace=namespace,
                          identity=own_identity(env), **timings)


# -- the pure part: records, observations, decisions ---------------------------------------------------


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says, as far as the election is concerned."""

    holder: str | None
    lease_duration: float
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0
    resource_version: str | None = None

    @classmethod
    def from_lease(cls, lease) -> "LeaseRecord":
        spec = lease.spec
        return cls(holder=spec.holder_identity or None, lease_duration=float(spec.lease_duration_seconds or 0),
                   acquire_time=spec.acquire_time, renew_time=spec.renew_time,
                   transitions=spec.lease_transitions or 0, resource_version=lease.metadata.resource_version)


@dataclass(frozen=True)
class Observation:
    """A record and the moment (this candidate's monotonic clock) it was first seen as it is."""

    record: LeaseRecord
    observed_at: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """The lease's time runs from when *this* candidate first saw the current record: every write
    (a renewal included) changes its resourceVersion and restarts it. Never from renewTime, which
    another machine's clock wrote."""
    if previous is not None and previous.record.resource_version == record.resource_version \
            and previous.record.holder == record.holder:
        return previous
    return Observation(record, now)


def expires_at(observation: Observation) -> float:
    return observation.observed_at + observation.record.lease_duration


def is_expired(observation: Observation, now: float) -> bool:
    """No holder (released, or never held), or not renewed for its duration as seen from here."""
    return observation.record.holder is None or now >= expires_at(observation)


def may_take(observation: Observation | None, identity: str, now: float) -> bool:
    """A candidate may write itself into the lease when there is none yet, when it holds it
    already (a renewal), or when the holder's lease has expired."""
    if observation is None:
        return True
    return observation.record.holder == identity or is_expired(observation, now)


def must_stop(last_renewed: float | None, now: float, renew_deadline: float) -> bool:
    """A leader stops acting once it has not renewed for renew_deadline, counted from the start of
    its last successful renewal (`last_renewed`, its own monotonic clock). Before the first
    renewal it is not a leader at all."""
    return last_renewed is None or now - last_renewed >= renew_deadline


def next_attempt_in(observation: Observation | None, identity: str, now: float, retry_period: float) -> float:
    """Seconds until a standby tries again: its retry period, but no later than the moment the
    holder's lease expires (so that the take-over does not wait for the next poll)."""
    if observation is None or observation.record.holder in (None, identity):
        return retry_period
    return max(0.0, min(retry_period, expires_at(observation) - now)) + 0.01


def claimed(record: LeaseRecord | None, identity: str, lease_duration: float, wall_now: datetime) -> LeaseRecord:
    """The record this candidate writes to acquire or renew: a new holder gets a new acquireTime
    and one more transition; a renewal only moves renewTime."""
    if record is not None and record.holder == identity:
        return replace(record, lease_duration=lease_duration, renew_time=wall_now)
    transitions = 0 if record is None else record.transitions + (1 if record.holder else 0)
    return LeaseRecord(holder=identity, lease_duration=lease_duration, acquire_time=wall_now, renew_time=wall_now,
                       transitions=transitions, resource_version=None if record is None else record.resource_version)


def micro_time(value: datetime | None) -> str | None:
    """A MicroTime as the API server parses it (RFC 3339, exactly six fractional digits)."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(name: str, record: LeaseRecord) -> dict:
    metadata: dict = {"name": name}
    if record.resource_version:
        metadata["resourceVersion"] = record.resource_version  # optimistic concurrency: a replace, not a blind write
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": {"holderIdentity": record.holder, "leaseDurationSeconds": max(1, round(record.lease_duration)),
                     "acquireTime": micro_time(record.acquire_time), "renewTime": micro_time(record.renew_time),
                     "leaseTransitions": record.transitions}}


# -- the I/O part -----------------------------------------------------------------------------------------


def _exit_lost(message: str) -> None:  # pragma: no cover - leaves the process
    log.critical("leader election: %s; leaving the process (exit code %d) so that nothing more is done "
                 "by this replica; it restarts as a standby", message, LOST_EXIT_CODE)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(LOST_EXIT_CODE)


class LeaderElector:
    """One candidate. `acquire_once()` / `renew_once()` are single attempts (unit-testable with a
    fake API and clock); `run_renewal()` keeps renewing in threads and leaves the process when the
    renew deadline passes or someone else holds the lease."""

    def __init__(self, config: ElectionConfig, api: kubernetes.client.ApiClient,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 on_lost: Callable[[str], None] = _exit_lost) -> None:
        self.config, self.clock, self.wall_clock, self.on_lost = config, clock, wall_clock, on_lost
        self.leases = kubernetes.client.CoordinationV1Api(api)
        self.observation: Observation | None = None
        self.last_renewed: float | None = None  # start of the last successful write naming us
        self._stop = threading.Event()
        self._lost = False
        self._reported_holder: str | None = None

    # single attempts

    def _read(self) -> LeaseRecord | None:
        try:
            return LeaseRecord.from_lease(self.leases.read_namespaced_lease(self.config.name, self.config.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when, after it, this candidate holds the lease."""
        started = self.clock()
        record = self._read()
        now = self.clock()
        self.observation = None if record is None else observe(self.observation, record, now)
        if not may_take(self.observation, self.config.identity, now):
            assert record is not None
            if record.holder != self._reported_holder:
                self._reported_holder = record.holder
                log.info("leader election: lease %s/%s is held by %s; standing by", self.config.namespace,
                         self.config.name, record.holder)
            return False
        wanted = claimed(record, self.config.identity, self.config.lease_duration, self.wall_clock())
        body = lease_body(self.config.name, wanted)
        try:
            if record is None:
                written = self.leases.create_namespaced_lease(self.config.namespace, body)
            else:
                written = self.leases.replace_namespaced_lease(self.config.name, self.config.namespace, body)
        except ApiException as exc:
            if exc.status in (409, 404):  # another candidate wrote first (or deleted it): not ours this round
                log.info("leader election: lost a race for lease %s/%s (%s)", self.config.namespace,
                         self.config.name, exc.status)
                return False
            raise
        fresh = LeaseRecord.from_lease(written)
        self.observation = Observation(fresh, self.clock())
        if record is None or record.holder != self.config.identity:
            log.info("leader election: %s acquired lease %s/%s (transition %d, previous holder %s)",
                     self.config.identity, self.config.namespace, self.config.name, fresh.transitions,
                     record.holder if record else None)
        self.last_renewed = started
        return True

    def attempt(self) -> bool:
        """try_acquire_or_renew, with API errors counted as a failed attempt."""
        try:
            return self.try_acquire_or_renew()
        except Exception as exc:  # noqa: BLE001 - the deadline decides what a failure means
            log.warning("leader election: lease %s/%s not written: %s: %s", self.config.namespace,
                        self.config.name, type(exc).__name__, exc)
            return False

    def wait_in(self) -> float:
        return next_attempt_in(self.observation, self.config.identity, self.clock(), self.config.retry_period)

    def holds(self) -> bool:
        return not self._lost and not must_stop(self.last_renewed, self.clock(), self.config.renew_deadline)

    # the background part of a leader

    def check(self) -> str | None:
        """Why this leader must stop now, or None."""
        if must_stop(self.last_renewed, self.clock(), self.config.renew_deadline):
            return f"lease not renewed for {self.config.renew_deadline:g}s (renew deadline)"
        if self.observation is not None and self.observation.record.holder not in (None, self.config.identity):
            return f"lease taken by {self.observation.record.holder}"
        return None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.config.retry_period):
            self.attempt()
            reason = self.check()
            if reason:
                self._lose(reason)
                return

    def _watchdog(self) -> None:
        # Separate from the renewals: a renewal stuck in a request must not delay the stop.
        while not self._stop.wait(0.2):
            reason = self.check()
            if reason:
                self._lose(reason)
                return

    def _lose(self, reason: str) -> None:
        if self._lost:
            return
        self._lost = True
        self._stop.set()
        self.on_lost(reason)

    def run_renewal(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True),
                   threading.Thread(target=self._watchdog, name="lease-watchdog", daemon=True)]
        for thread in threads:
            thread.start()
        return threads

    def stop(self) -> None:
        self._stop.set()

    def release(self) -> bool:
        """Hand the lease over at a clean exit (no holder, duration 1 s), so a standby need not wait
        for it to expire. Only while still holding it, and only with the resourceVersion read."""
        if not self.holds():
            return False
        self._stop.set()
        try:
            record = self._read()
            if record is None or record.holder != self.config.identity:
                return False
            now = self.wall_clock()
            released = replace(record, holder=None, lease_duration=1, renew_time=now, acquire_time=now)
            self.leases.replace_namespaced_lease(self.config.name, self.config.namespace,
                                                 lease_body(self.config.name, released))
        except Exception as exc:  # noqa: BLE001 - it then expires as if the process had died
            log.warning("leader election: lease %s/%s not released: %s", self.config.namespace, self.config.name, exc)
            return False
        log.info("leader election: %s released lease %s/%s", self.config.identity, self.config.namespace,
                 self.config.name)
        return True
