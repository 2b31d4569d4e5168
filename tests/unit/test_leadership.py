"""Leader election's decisions with a fake clock, and two candidates against a fake Lease API that
keeps resourceVersions like the API server (canarist.kube.leadership)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from kubernetes.client import ApiException

from canarist.kube.leadership import (ElectionConfig, ElectionError, LeaderElector, LeaseRecord, Observation,
                                      claimed, config_from_env, is_expired, lease_body, may_take, micro_time,
                                      must_stop, next_attempt_in, observe)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def record(holder="a", rv="1", duration=10.0, transitions=0) -> LeaseRecord:
    return LeaseRecord(holder=holder, lease_duration=duration, acquire_time=T0, renew_time=T0,
                       transitions=transitions, resource_version=rv)


# -- pure decisions ----------------------------------------------------------------------------------


def test_a_lease_expires_on_the_observers_clock_not_by_its_renew_time():
    # renewTime was written by another machine's clock, an hour off: it does not matter.
    seen = observe(None, LeaseRecord("a", 10.0, renew_time=T0 - timedelta(hours=1), resource_version="5"), now=100.0)
    assert not is_expired(seen, 100.0) and not is_expired(seen, 109.99)
    assert is_expired(seen, 110.0)


def test_every_write_restarts_the_lease_as_seen_by_a_standby():
    first = observe(None, record(rv="1"), now=0.0)
    same = observe(first, record(rv="1"), now=8.0)
    assert same is first and is_expired(same, 10.0)
    renewed = observe(first, record(rv="2"), now=8.0)
    assert renewed.observed_at == 8.0 and not is_expired(renewed, 10.0) and is_expired(renewed, 18.0)


def test_a_lease_without_holder_is_free():
    released = observe(None, record(holder=None, duration=1), now=0.0)
    assert is_expired(released, 0.0) and may_take(released, "b", 0.0)


def test_who_may_take_the_lease():
    held = observe(None, record(holder="a"), now=0.0)
    assert may_take(None, "b", 0.0)  # no lease yet: create it
    assert may_take(held, "a", 5.0)  # the holder renews
    assert not may_take(held, "b", 9.9)  # another waits for the holder's lease to run out
    assert may_take(held, "b", 10.0)


def test_a_leader_stops_at_its_renew_deadline_counted_from_the_start_of_its_last_renewal():
    assert must_stop(None, 0.0, 7.0)  # never renewed: not a leader
    assert not must_stop(100.0, 106.9, 7.0)
    assert must_stop(100.0, 107.0, 7.0)


def test_the_leader_has_stopped_before_a_standby_may_start():
    """The standby counts lease_duration from when it saw the renewal, which is no earlier than
    the leader began sending it: the leader's stop (deadline) comes renew_deadline after that."""
    config = ElectionConfig("l", "ns", "a")
    for renewal_started in (0.0, 3.3, 50.0):
        for seen_after in (0.0, 0.5, 1.9):  # the standby's poll comes at most a retry period later
            seen = observe(None, record(rv=str(renewal_started)), now=renewal_started + seen_after)
            leader_stops = renewal_started + config.renew_deadline
            standby_may_start = next(t / 100 for t in range(0, 10_000) if may_take(seen, "b", t / 100))
            assert standby_may_start - leader_stops >= config.lease_duration - config.renew_deadline - 1e-9


def test_a_standby_wakes_when_the_lease_expires_not_at_its_next_poll():
    seen = observe(None, record(holder="a"), now=0.0)
    assert next_attempt_in(seen, "b", 0.0, 2.0) == pytest.approx(2.01)
    assert next_attempt_in(seen, "b", 9.5, 2.0) == pytest.approx(0.51)
    assert next_attempt_in(seen, "b", 12.0, 2.0) == pytest.approx(0.01)
    assert next_attempt_in(seen, "a", 9.5, 2.0) == 2.0 and next_attempt_in(None, "b", 0, 2.0) == 2.0


def test_takeover_within_15_seconds_of_a_kill_at_any_moment():
    """Leader renews every 2 s, standby polls every 2 s (with the expiry wake-up): whatever the
    phases, the standby's attempt after the kill comes within 15 s (12 s + the retry slack)."""
    config = ElectionConfig("l", "ns", "a")
    worst = 0.0
    for kill_step in range(0, 200):
        kill = 20.0 + kill_step / 100
        for poll_phase in (0.0, 0.3, 0.9, 1.7, 1.99):
            renewals = [t * config.retry_period for t in range(0, 100) if t * config.retry_period <= kill]
            seen, now, rv_seen = None, poll_phase, None
            while True:
                last = max(r for r in renewals if r <= now)
                rv = str(last)
                if seen is None or rv != rv_seen:
                    seen, rv_seen = observe(seen, record(rv=rv), now), rv
                if now > kill and may_take(seen, "b", now):
                    break
                now += next_attempt_in(seen, "b", now, config.retry_period)
            worst = max(worst, now - kill)
    print(f"worst take-over after a kill: {worst:.2f}s")
    assert worst <= 12.1, worst


def test_claiming_a_lease():
    fresh = claimed(None, "a", 10.0, T0)
    assert (fresh.holder, fresh.transitions, fresh.acquire_time, fresh.renew_time) == ("a", 0, T0, T0)
    later = T0 + timedelta(seconds=2)
    renewed = claimed(fresh, "a", 10.0, later)
    assert renewed.acquire_time == T0 and renewed.renew_time == later and renewed.transitions == 0
    taken = claimed(record(holder="a", rv="7", transitions=3), "b", 10.0, later)
    assert (taken.holder, taken.transitions, taken.acquire_time, taken.resource_version) == ("b", 4, later, "7")
    after_release = claimed(record(holder=None, rv="8", transitions=4), "b", 10.0, later)
    assert after_release.transitions == 4  # a release is no transition of its own


def test_lease_body_carries_the_resource_version_and_micro_times():
    body = lease_body("canarist-operator", claimed(record(holder="a", rv="42"), "b", 10.0, T0))
    assert body["metadata"] == {"name": "canarist-operator", "resourceVersion": "42"}
    assert body["spec"]["renewTime"] == "2026-01-01T12:00:00.000000Z" == micro_time(T0)
    assert body["spec"]["leaseDurationSeconds"] == 10 and body["spec"]["holderIdentity"] == "b"
    assert "resourceVersion" not in lease_body("x", claimed(None, "a", 10.0, T0))["metadata"]


# -- configuration -----------------------------------------------------------------------------------


def test_config_from_env(tmp_path):
    missing = tmp_path / "none"
    assert config_from_env({}, missing) is None
    assert config_from_env({"CANARIST_LEADER_ELECTION": "false"}, missing) is None
    on = {"CANARIST_LEADER_ELECTION": "true", "POD_NAME": "canarist-5d9-x", "POD_NAMESPACE": "canarist-system"}
    config = config_from_env(on, missing)
    assert (config.name, config.namespace) == ("canarist-operator", "canarist-system")
    assert config.identity.startswith("canarist-5d9-x_") and config.identity != config_from_env(on, missing).identity
    assert (config.lease_duration, config.renew_deadline, config.retry_period) == (10.0, 7.0, 2.0)
    config = config_from_env({**on, "CANARIST_LEASE_NAME": "mine", "CANARIST_LEASE_NAMESPACE": "elsewhere",
                              "CANARIST_LEASE_DURATION": "6", "CANARIST_RENEW_DEADLINE": "4",
                              "CANARIST_RETRY_PERIOD": "1"}, missing)
    assert (config.name, config.namespace, config.lease_duration, config.renew_deadline) == ("mine", "elsewhere", 6, 4)
    sa_file = tmp_path / "namespace"
    sa_file.write_text("from-sa\n")
    assert config_from_env({"CANARIST_LEADER_ELECTION": "1"}, sa_file).namespace == "from-sa"
    with pytest.raises(ElectionError, match="namespace"):
        config_from_env({"CANARIST_LEADER_ELECTION": "true"}, missing)
    with pytest.raises(ElectionError, match="renewDeadline"):
        config_from_env({**on, "CANARIST_RENEW_DEADLINE": "10"}, missing)
    with pytest.raises(ElectionError, match="CANARIST_RETRY_PERIOD"):
        config_from_env({**on, "CANARIST_RETRY_PERIOD": "soon"}, missing)


# -- two candidates against a fake API server ----------------------------------------------------------


class FakeLeases:
    """CoordinationV1Api's lease calls, with resourceVersion checks like the API server's."""

    def __init__(self) -> None:
        self.stored: dict | None = None
        self.rv = 0
        self.history: list[str | None] = []
        self.fail = False

    def _lease(self):
        spec = self.stored["spec"]
        parse = lambda v: datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None  # noqa: E731
        return SimpleNamespace(metadata=SimpleNamespace(resource_version=self.stored["metadata"]["resourceVersion"]),
                               spec=SimpleNamespace(holder_identity=spec["holderIdentity"],
                                                    lease_duration_seconds=spec["leaseDurationSeconds"],
                                                    acquire_time=parse(spec["acquireTime"]),
                                                    renew_time=parse(spec["renewTime"]),
                                                    lease_transitions=spec["leaseTransitions"]))

    def _store(self, body):
        if self.fail:
            raise ApiException(status=503)
        self.rv += 1
        self.stored = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)}}
        self.history.append(body["spec"]["holderIdentity"])
        return self._lease()

    def read_namespaced_lease(self, name, namespace):
        if self.fail:
            raise ApiException(status=503)
        if self.stored is None:
            raise ApiException(status=404)
        return self._lease()

    def create_namespaced_lease(self, namespace, body):
        if self.stored is not None:
            raise ApiException(status=409)
        return self._store(body)

    def replace_namespaced_lease(self, name, namespace, body):
        if self.stored is None:
            raise ApiException(status=404)
        if body["metadata"].get("resourceVersion") != self.stored["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        return self._store(body)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def candidate(identity: str, leases: FakeLeases, clock: Clock, lost: list) -> LeaderElector:
    elector = LeaderElector(ElectionConfig("canarist-operator", "ns", identity), api=None, clock=clock,
                            wall_clock=lambda: T0 + timedelta(seconds=clock.t), on_lost=lost.append)
    elector.leases = leases
    return elector


def test_one_leader_a_standby_and_a_takeover_after_the_leader_dies():
    leases, clock, lost = FakeLeases(), Clock(), []
    a, b = candidate("a", leases, clock, lost), candidate("b", leases, clock, lost)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    for _ in range(10):  # a renews every 2 s; b keeps seeing a fresh lease
        clock.t += 2
        assert a.try_acquire_or_renew() and a.check() is None
        assert not b.try_acquire_or_renew()
    assert leases.history == ["a"] * 11
    # a dies (no more renewals): b takes over only once a's lease ran out on b's clock.
    died = clock.t
    while not b.try_acquire_or_renew():
        clock.t += b.wait_in()
    assert 10.0 <= clock.t - died <= 12.1
    assert leases.stored["spec"]["holderIdentity"] == "b" and leases.stored["spec"]["leaseTransitions"] == 1
    # Had a lived on, it would have stopped 7 s after its last renewal, 3 s before b could start.
    assert a.check() == "lease not renewed for 7s (renew deadline)"


def test_two_standbys_racing_for_an_expired_lease_never_both_win():
    leases, clock, lost = FakeLeases(), Clock(), []
    a = candidate("a", leases, clock, lost)
    assert a.try_acquire_or_renew()
    b, c = candidate("b", leases, clock, lost), candidate("c", leases, clock, lost)
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()
    clock.t += 10
    # Both read the expired lease before either writes: the second replace carries a stale resourceVersion.
    b_read, c_read = leases.read_namespaced_lease("", ""), leases.read_namespaced_lease("", "")
    assert b_read.metadata.resource_version == c_read.metadata.resource_version
    original_read = leases.read_namespaced_lease
    leases.read_namespaced_lease = lambda *_: c_read
    assert b.try_acquire_or_renew()
    assert not c.try_acquire_or_renew()  # 409 Conflict
    leases.read_namespaced_lease = original_read
    assert leases.stored["spec"]["holderIdentity"] == "b" and leases.history == ["a", "b"]


def test_two_candidates_creating_the_lease_at_once_only_one_wins():
    leases, clock, lost = FakeLeases(), Clock(), []
    a, b = candidate("a", leases, clock, lost), candidate("b", leases, clock, lost)
    original_read = leases.read_namespaced_lease
    leases.read_namespaced_lease = lambda *_: (_ for _ in ()).throw(ApiException(status=404))
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    leases.read_namespaced_lease = original_read
    assert leases.history == ["a"]


def test_a_leader_that_cannot_renew_stops_before_its_lease_expires_for_others():
    leases, clock, lost = FakeLeases(), Clock(), []
    a, b = candidate("a", leases, clock, lost), candidate("b", leases, clock, lost)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    leases.fail = True  # the API server is unreachable for a, not for b
    stopped_at = None
    for _ in range(100):
        clock.t += 0.1
        if a.check():
            stopped_at = clock.t
            break
    assert stopped_at is not None and stopped_at - 1000.0 == pytest.approx(7.0)
    leases.fail = False
    assert not b.try_acquire_or_renew()  # a stopped; its lease still runs for others
    while not b.try_acquire_or_renew():
        clock.t += b.wait_in()
    assert clock.t - stopped_at >= 3.0 - 1e-9


def test_a_leader_whose_lease_was_taken_stops():
    leases, clock, lost = FakeLeases(), Clock(), []
    a = candidate("a", leases, clock, lost)
    assert a.try_acquire_or_renew()
    # Someone overwrote the lease (an admin, a candidate with a broken clock): a must not go on.
    leases.stored["spec"]["holderIdentity"] = "intruder"
    leases.stored["metadata"]["resourceVersion"] = "99"
    clock.t += 2
    assert not a.try_acquire_or_renew()
    assert a.check() == "lease taken by intruder"


def test_release_hands_over_without_waiting_for_expiry():
    leases, clock, lost = FakeLeases(), Clock(), []
    a, b = candidate("a", leases, clock, lost), candidate("b", leases, clock, lost)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    assert a.release()
    assert leases.stored["spec"]["holderIdentity"] is None and leases.stored["spec"]["leaseDurationSeconds"] == 1
    assert b.try_acquire_or_renew()  # at once: no holder
    assert not a.release()  # no longer ours: nothing written
    assert leases.history == ["a", None, "b"]


def test_observation_is_kept_while_the_record_does_not_change():
    seen = Observation(record(rv="3"), 5.0)
    assert observe(seen, record(rv="3"), 9.0) is seen
    assert observe(seen, record(holder="b", rv="3"), 9.0).observed_at == 9.0
