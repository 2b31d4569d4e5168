"""The judge's SQLite storage: samples, pairing, outcomes, usage, verdict queries, restart."""

from __future__ import annotations

import sqlite3

import pytest

from canarist.judge.sampling import fingerprint
from canarist.judge.storage import NewSample, Storage

R = "prod/bot"
S = 1_000_000  # one second in microseconds


def sample(variant="canary", request="q1", response="a", ts=0, status="pending", release=R, **kw) -> NewSample:
    return NewSample(release=release, variant=variant, request=request, response=response,
                     fingerprint=fingerprint(request), ts=ts, status=status, **kw)


@pytest.fixture
def db():
    storage = Storage(":memory:")
    yield storage
    storage.close()


def test_file_database_uses_wal_and_has_the_verdict_index(tmp_path):
    storage = Storage(str(tmp_path / "judge.db"))
    try:
        assert storage.journal_mode == "wal"
        assert storage.ping()
    finally:
        storage.close()
    with sqlite3.connect(tmp_path / "judge.db") as raw:
        indexes = {row[0]: row[1] for row in raw.execute("SELECT name, sql FROM sqlite_master WHERE type='index'")}
        assert "(release, variant, ts)" in indexes["samples_verdict"]
        plan = " ".join(str(r) for r in raw.execute(
            "EXPLAIN QUERY PLAN SELECT count(*) FROM samples WHERE release = 'a/b' AND variant = 'canary'"
            " AND ts >= 0 AND ts < 10"))
        assert "samples_verdict" in plan


def test_insert_counts_and_keeps_every_field(db):
    result = db.insert_samples([
        sample("canary", "q1", ts=1 * S, revision="r2", request_id="req", trace_id="tr", segment="eu"),
        sample("canary", "q2", ts=2 * S, status="unsampled"),
        sample("primary", "q3", ts=3 * S, status="skipped_budget"),
    ], ingested_at=10 * S)
    assert (result.accepted, result.sampled) == (3, 2)
    assert len(result.pending_samples) == 1 and result.pending_pairs == ()
    row = db.get_sample(result.pending_samples[0])
    assert (row.release, row.variant, row.revision, row.request, row.ts, row.status) == \
        (R, "canary", "r2", "q1", 1 * S, "pending")
    assert row.fingerprint == fingerprint("q1") and row.pair_id is None
    counts = db.counts(R, "canary", 0, 10 * S)
    assert (counts.ingested, counts.sampled, counts.pending, counts.judged) == (2, 1, 1, 0)
    assert db.counts(R, "primary", 0, 10 * S).skipped_budget == 1


def test_sampled_answers_of_both_variants_to_one_input_are_paired_once(db):
    result = db.insert_samples([sample("primary", "q", ts=1 * S), sample("canary", "  q ", ts=2 * S),
                                sample("canary", "q", ts=3 * S)])
    assert len(result.pending_pairs) == 1
    pair = db.get_pair(result.pending_pairs[0])
    p, c1, c2 = result.pending_samples
    assert (pair.primary_id, pair.canary_id, pair.status) == (p, c1, "pending")
    assert db.get_sample(c2).pair_id is None, "each sample is in at most one pair"
    # a later primary answer pairs with the still unpaired canary answer
    later = db.insert_samples([sample("primary", "q", ts=4 * S)])
    pair2 = db.get_pair(later.pending_pairs[0])
    assert (pair2.primary_id, pair2.canary_id) == (later.pending_samples[0], c2)
    # unsampled answers, other inputs and other releases never pair
    none = db.insert_samples([sample("canary", "q", status="unsampled"), sample("canary", "other"),
                              sample("canary", "q", release="prod/other")])
    assert none.pending_pairs == ()


def test_pairing_prefers_the_answer_nearest_in_time(db):
    ids = db.insert_samples([sample("primary", "q", ts=t * S) for t in (1, 50, 100)]).pending_samples
    canary = db.insert_samples([sample("canary", "q", ts=60 * S)])
    assert db.get_pair(canary.pending_pairs[0]).primary_id == ids[1]
    canary = db.insert_samples([sample("canary", "q", ts=90 * S)])
    assert db.get_pair(canary.pending_pairs[0]).primary_id == ids[2]


def test_pairs_of_exhausted_releases_are_skipped_at_once(db):
    result = db.insert_samples([sample("primary", "q", status="skipped_budget"),
                                sample("canary", "q", status="skipped_budget")], exhausted={R})
    assert result.pending_pairs == () and result.pending_samples == ()
    assert db.count_pending() == (0, 0)


def test_finish_records_outcome_once_and_adds_tokens(db):
    sid = db.insert_samples([sample()]).pending_samples[0]
    assert db.finish_sample(sid, "scored", score=0.75, reason="fine", tokens=120)
    assert not db.finish_sample(sid, "error", error="late"), "only a pending sample can finish"
    row = db.get_sample(sid)
    assert (row.status, row.score, row.reason, row.tokens) == ("scored", 0.75, "fine", 120)
    assert db.tokens_used(R) == 120 and db.tokens_used("prod/other") == 0
    pair = db.insert_samples([sample("primary", "q2"), sample("canary", "q2")]).pending_pairs[0]
    assert db.finish_pair(pair, "done", winner="canary", reason="b better", tokens=30)
    assert not db.finish_pair(pair, "error")
    assert db.tokens_used(R) == 150


def test_verdict_queries_by_window_variant_and_revision(db):
    ids = db.insert_samples([
        sample("canary", "a", ts=10 * S, revision="new"),
        sample("canary", "b", ts=20 * S, revision="new"),
        sample("canary", "c", ts=30 * S, revision="old"),
        sample("canary", "d", ts=40 * S, revision="new"),     # outside [10s, 40s)
        sample("primary", "a", ts=10 * S),
    ]).pending_samples
    for sid, score in zip(ids, (0.9, 0.2, 0.6, 0.1)):
        db.finish_sample(sid, "scored", score=score)
    assert sorted(db.scores(R, "canary", 10 * S, 40 * S)) == [0.2, 0.6, 0.9]
    assert sorted(db.scores(R, "canary", 10 * S, 40 * S, revision="new")) == [0.2, 0.9]
    assert db.scores(R, "canary", 11 * S, 20 * S) == [], "since inclusive, until exclusive"
    c = db.counts(R, "canary", 0, 100 * S)
    assert (c.ingested, c.sampled, c.judged, c.pending, c.errors) == (4, 4, 4, 0, 0)
    assert db.counts(R, "primary", 0, 100 * S).pending == 1


def test_pairwise_counts_by_canary_time_from_either_side(db):
    pairs = []
    for i, (winner, ts) in enumerate([("canary", 1), ("canary", 2), ("primary", 3), ("tie", 4), ("canary", 99)]):
        got = db.insert_samples([sample("primary", f"q{i}", ts=0, revision="p1"),
                                 sample("canary", f"q{i}", ts=ts * S, revision="c1")])
        pairs.append(got.pending_pairs[0])
        db.finish_pair(got.pending_pairs[0], "done", winner=winner)
    pending = db.insert_samples([sample("primary", "x", ts=0), sample("canary", "x", ts=1 * S)])
    assert db.pairwise(R, "canary", 0, 10 * S) == {"wins": 2, "losses": 1, "ties": 1}
    assert db.pairwise(R, "primary", 0, 10 * S) == {"wins": 1, "losses": 2, "ties": 1}
    assert db.pairwise(R, "canary", 0, 10 * S, revision="c1") == {"wins": 2, "losses": 1, "ties": 1}
    assert db.pairwise(R, "canary", 0, 10 * S, revision="zz") == {"wins": 0, "losses": 0, "ties": 0}
    assert db.pairwise(R, "primary", 0, 10 * S, revision="p1")["wins"] == 1
    assert pending.pending_pairs, "a pending pair is not counted"


def test_failed_samples_carry_the_other_answer_and_page(db):
    ids = db.insert_samples(
        [sample("canary", f"q{i}", response=f"bad {i}", ts=i * S, segment="s") for i in range(7)]
        + [sample("primary", "q3", response="good 3", ts=3 * S)]).pending_samples
    for sid in ids[:7]:
        db.finish_sample(sid, "scored", score=0.1, reason="wrong")
    db.finish_sample(ids[7], "scored", score=0.9)
    rows = list(db.failed_samples(R, 0.5, page=2))
    assert [r["response"] for r in rows] == [f"bad {i}" for i in range(7)]
    assert rows[3]["other_response"] == "good 3" and rows[0]["other_response"] is None
    assert [r["response"] for r in db.failed_samples(R, 0.5, variant="canary", since=2 * S, until=4 * S)] \
        == ["bad 2", "bad 3"]
    assert list(db.failed_samples(R, 0.05)) == []


def test_other_answer_of_an_unsampled_input_comes_from_the_nearest_sample(db):
    ids = db.insert_samples([sample("canary", "q", response="bad", ts=5 * S)]).pending_samples
    db.insert_samples([sample("primary", "q", response="far", ts=1 * S, status="unsampled"),
                       sample("primary", "q", response="near", ts=6 * S, status="unsampled")])
    db.finish_sample(ids[0], "scored", score=0.0)
    assert [r["other_response"] for r in db.failed_samples(R, 0.5)] == ["near"]


def test_pending_work_survives_a_restart(tmp_path):
    path = str(tmp_path / "judge.db")
    first = Storage(path)
    result = first.insert_samples([sample("primary", "q"), sample("canary", "q"), sample("canary", "r")])
    first.finish_sample(result.pending_samples[2], "scored", score=1.0, tokens=5)
    first.close()
    second = Storage(path)
    try:
        assert second.count_pending() == (2, 1)
        assert second.pending_sample_ids() == list(result.pending_samples[:2])
        assert second.pending_sample_ids(after_id=result.pending_samples[0]) == [result.pending_samples[1]]
        assert second.pending_pair_ids() == list(result.pending_pairs)
        assert second.tokens_used(R) == 5
    finally:
        second.close()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "judge.db"
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="newer"):
        Storage(str(path))


def test_a_failed_batch_stores_nothing(db):
    with pytest.raises(sqlite3.IntegrityError):
        db.insert_samples([sample("canary", "ok"), sample("stable", "bad")])  # type: ignore[arg-type]
    assert db.counts(R, "canary", -(2**62), 2**62).ingested == 0
