"""The judge's SQLite storage: samples, pairing, outcomes, usage, verdict queries, restart."""

from __future__ import annotations

import sqlite3

import pytest

from canarist.judge.sampling import fingerprint
from canarist.judge.storage import SCHEMA_VERSION, NewSample, Storage

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


def test_other_answer_comes_from_the_nearest_sampled_answer_never_an_unsampled_one(db):
    ids = db.insert_samples([sample("canary", "q", response="bad", ts=5 * S)]).pending_samples
    db.insert_samples([sample("primary", "q", response="far", ts=1 * S, status="skipped_budget"),
                       sample("primary", "q", response="near", ts=6 * S, status="unsampled")])
    db.finish_sample(ids[0], "scored", score=0.0)
    # (An input is sampled for both variants or neither; only a change of the sample rate mixes them.)
    assert [r["other_response"] for r in db.failed_samples(R, 0.5)] == ["far"], "unsampled texts are not stored"


def test_unsampled_samples_are_counted_but_their_texts_not_stored(db):
    got = db.insert_samples([sample("canary", "secret question", response="secret answer", status="unsampled",
                                    ts=1 * S, request_id="r1"),
                             sample("primary", "secret question", response="other", status="unsampled", ts=1 * S)])
    assert (got.accepted, got.sampled, got.pending_samples, got.pending_pairs) == (2, 0, (), ())
    rows = db._db.execute("SELECT request, response, fingerprint, request_id, pair_id FROM samples").fetchall()
    assert [tuple(r) for r in rows] == [("", "", fingerprint("secret question"), "r1", None),
                                        ("", "", fingerprint("secret question"), None, None)]
    assert db.counts(R, "canary", 0, 10 * S).ingested == 1 and db.counts(R, "primary", 0, 10 * S).ingested == 1


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


# -- the pair stream (GET /v1/pairs) -----------------------------------------------------------


def make_pairs(db: Storage, n: int, prefix: str = "q", *, ts: tuple[int, int] = (0, 0),
               revisions: tuple[str | None, str | None] = (None, None)) -> list[tuple[int, int, int]]:
    """n pending pairs of inputs {prefix}0.. as (pair id, primary sample id, canary sample id)."""
    out = []
    for i in range(n):
        got = db.insert_samples([sample("primary", f"{prefix}{i}", ts=ts[0], revision=revisions[0]),
                                 sample("canary", f"{prefix}{i}", ts=ts[1], revision=revisions[1])])
        out.append((got.pending_pairs[0], *got.pending_samples))
    return out


def stream(db: Storage, after: int = 0, **kw) -> list[int]:
    return [p.seq for p in db.pairs_after(R, after, **kw).pairs]


def test_a_pair_enters_the_stream_when_its_last_part_finishes_whatever_the_order(db):
    (a, ap, ac), (b, bp, bc), (c, cp, cc) = make_pairs(db, 3)
    # a: comparison first, then both scores; b: scores first, comparison last; c: canary, comparison, primary
    db.finish_pair(a, "done", winner="canary")
    db.finish_sample(ap, "scored", score=0.2)
    db.finish_sample(bp, "scored", score=0.5)
    db.finish_sample(bc, "error", error="LLM down")
    db.finish_sample(cc, "scored", score=0.9)
    db.finish_pair(c, "error", error="unparseable")
    assert db.pairs_after(R).pairs == [], "no pair has all three parts final yet"
    db.finish_pair(b, "done", winner="tie")
    db.finish_sample(cp, "skipped_budget")
    db.finish_sample(ac, "scored", score=0.8)
    page = db.pairs_after(R)
    assert [p.fingerprint for p in page.pairs] == [fingerprint(q) for q in ("q1", "q2", "q0")], "completion order"
    assert [p.seq for p in page.pairs] == [1, 2, 3] and (page.cursor, page.more) == (3, False)
    got = {p.fingerprint: (p.primary_score, p.canary_score, p.winner) for p in page.pairs}
    assert got[fingerprint("q0")] == (0.2, 0.8, "canary")
    assert got[fingerprint("q1")] == (0.5, None, "tie"), "an errored score is None"
    assert got[fingerprint("q2")] == (None, 0.9, None), "skipped score and failed comparison are None"
    assert all(p.completed_at > 0 for p in page.pairs)


def test_a_pair_of_samples_already_final_completes_when_it_is_made(db):
    done = db.insert_samples([sample("primary", "q", status="skipped_budget")]).pending_samples
    assert done == ()
    skipped = db.insert_samples([sample("canary", "q", status="skipped_budget")], exhausted={R})
    assert skipped.pending_pairs == () and stream(db) == [1], "all three parts final at once"
    # the other way round: both samples scored before the pair is compared
    ids = db.insert_samples([sample("primary", "r"), sample("canary", "r")])
    for sid in ids.pending_samples:
        db.finish_sample(sid, "scored", score=0.5)
    assert stream(db) == [1]
    db.finish_pair(ids.pending_pairs[0], "done", winner="primary")
    assert stream(db) == [1, 2]
    assert not db.finish_pair(ids.pending_pairs[0], "error") and stream(db) == [1, 2], "never numbered twice"


def complete(db: Storage, pair: tuple[int, int, int], winner: str = "tie") -> None:
    pid, p, c = pair
    db.finish_sample(p, "scored", score=0.5)
    db.finish_sample(c, "scored", score=0.5)
    db.finish_pair(pid, "done", winner=winner)


def test_pages_are_exact_and_filters_move_the_cursor_past_what_they_leave_out(db):
    early = make_pairs(db, 2, "e", ts=(1 * S, 1 * S), revisions=("old", "old"))
    late = make_pairs(db, 5, "l", ts=(10 * S, 10 * S), revisions=("p1", "c1"))
    straddle = make_pairs(db, 1, "s", ts=(1 * S, 10 * S))  # the primary's answer is older than since
    for pair in early + late + straddle:
        complete(db, pair)
    first = db.pairs_after(R, limit=3)
    assert ([p.seq for p in first.pairs], first.cursor, first.more) == ([1, 2, 3], 3, True)
    second = db.pairs_after(R, first.cursor, limit=3)
    assert ([p.seq for p in second.pairs], second.more) == ([4, 5, 6], True)
    last = db.pairs_after(R, second.cursor, limit=3)
    assert ([p.seq for p in last.pairs], last.cursor, last.more) == ([7, 8], 8, False)
    assert db.pairs_after(R, last.cursor).pairs == [] and db.pairs_after(R, last.cursor).cursor == 8
    assert stream(db, since=10 * S) == [3, 4, 5, 6, 7], "both samples at/after since"
    assert stream(db, canary_revision="c1", primary_revision="p1") == [3, 4, 5, 6, 7]
    assert stream(db, canary_revision="old") == [1, 2] and stream(db, primary_revision="c1") == []
    empty = db.pairs_after(R, 0, canary_revision="nope")
    assert (empty.pairs, empty.cursor, empty.more) == ([], 8, False), "nothing to rescan next time"
    assert db.pairs_after("prod/other").cursor == 0 and stream(db, 8) == []


def test_the_stream_resumes_after_a_restart_without_loss_or_repeats(tmp_path):
    path = str(tmp_path / "judge.db")
    first = Storage(path)
    pairs = make_pairs(first, 6)
    for pair in pairs[:4]:
        complete(first, pair)
    page = first.pairs_after(R, limit=3)
    seen = [p.seq for p in page.pairs]
    database_id = first.database_id
    first.close()
    second = Storage(path)
    try:
        assert second.database_id == database_id
        for pair in pairs[4:]:
            complete(second, pair)
        cursor, more = page.cursor, True
        while more:
            page = second.pairs_after(R, cursor, limit=2)
            seen += [p.seq for p in page.pairs]
            cursor, more = page.cursor, page.more
        assert seen == [1, 2, 3, 4, 5, 6]
    finally:
        second.close()


def test_a_version_1_database_gets_the_completion_columns_and_its_complete_pairs(tmp_path):
    path = str(tmp_path / "judge.db")
    old = Storage(path)
    (a, ap, ac), (b, bp, bc), (c, cp, cc) = make_pairs(old, 3)
    for pair in [(a, ap, ac), (b, bp, bc)]:
        complete(old, pair)
    old.finish_sample(cp, "error", error="down")  # c stays incomplete: its comparison and canary are pending
    old.close()
    # Make it what a version 1 judge left behind: no completion columns, no meta table, user_version 1.
    with sqlite3.connect(path) as raw:
        raw.executescript("DROP INDEX pairs_completed; DROP INDEX pairs_stream; DROP TABLE meta;"
                          " ALTER TABLE pairs DROP COLUMN completed_seq; ALTER TABLE pairs DROP COLUMN completed_at;"
                          " PRAGMA user_version = 1;")
        # b finished before a (by its last part), though a has the lower id
        raw.execute("UPDATE pairs SET finished_at = CASE id WHEN ? THEN 300 ELSE 200 END", (a,))
        raw.execute("UPDATE samples SET finished_at = 100")
    upgraded = Storage(path)
    try:
        columns = {row["name"] for row in upgraded._db.execute("PRAGMA table_info(pairs)")}
        assert {"completed_seq", "completed_at"} <= columns
        assert upgraded._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        page = upgraded.pairs_after(R)
        assert [p.fingerprint for p in page.pairs] == [fingerprint("q1"), fingerprint("q0")]
        assert [p.completed_at for p in page.pairs] == [200, 300]
        upgraded.finish_sample(cc, "scored", score=0.4)
        upgraded.finish_pair(c, "done", winner="canary")
        later = upgraded.pairs_after(R, page.cursor)
        assert [(p.seq, p.primary_score, p.canary_score) for p in later.pairs] == [(3, None, 0.4)]
    finally:
        upgraded.close()
    again = Storage(path)  # opening it again changes nothing
    try:
        assert [p.seq for p in again.pairs_after(R).pairs] == [1, 2, 3]
    finally:
        again.close()



def test_the_stream_queries_use_its_indexes(db):
    statements: list[str] = []
    db._db.set_trace_callback(statements.append)  # the SQL as run, parameters filled in
    complete(db, make_pairs(db, 1)[0])
    db.pairs_after(R)
    db._db.set_trace_callback(None)
    plans = {sql: " | ".join(row[3] for row in db._db.execute("EXPLAIN QUERY PLAN " + sql))
             for sql in statements if "completed_seq" in sql}
    assert {sql[:20] for sql in plans} == {"SELECT p.id FROM pai", "UPDATE counters SET ", "UPDATE pairs SET com",
                                           "SELECT max(completed", "SELECT p.completed_s"}
    assert not [plan for plan in plans.values() if "SCAN" in plan], plans
    reads = [plan for sql, plan in plans.items() if sql.startswith(("SELECT max", "SELECT p.completed"))]
    assert len(reads) == 2 and all("pairs_completed" in plan or "pairs_stream" in plan for plan in reads), plans


# -- pairing: by request id first, then by input within the window --------------------------------

def partners(db: Storage) -> set[tuple[str | None, str | None]]:
    """(primary's request id, canary's request id) of every pair."""
    rows = db._db.execute("SELECT s.request_id, c.request_id FROM pairs p JOIN samples s ON s.id = p.primary_id"
                          " JOIN samples c ON c.id = p.canary_id").fetchall()
    return {(a, b) for a, b in rows}


def test_request_ids_pair_the_answers_to_the_very_same_request_among_repeated_inputs(db):
    # Three users ask the same question; the mirror's copies come back in another order, later.
    db.insert_samples([sample("primary", "reset my password", ts=t * S, request_id=f"r{t}") for t in (1, 2, 3)])
    db.insert_samples([sample("canary", "reset my password", ts=t * S, request_id=f"r{rid}", mirrored=True)
                       for t, rid in ((4, 3), (5, 1), (6, 2))])
    assert partners(db) == {("r1", "r1"), ("r2", "r2"), ("r3", "r3")}


def test_unique_inputs_pair_one_to_one(db):
    db.insert_samples([sample("primary", f"question {i}", ts=i * S, request_id=f"q{i}") for i in range(50)])
    db.insert_samples([sample("canary", f"question {i}", ts=(i + 1) * S, request_id=f"q{i}", mirrored=True)
                       for i in reversed(range(50))])
    assert partners(db) == {(f"q{i}", f"q{i}") for i in range(50)}


def test_a_request_id_reused_for_another_input_does_not_pair_two_inputs(db):
    db.insert_samples([sample("primary", "what is 2+2", ts=1 * S, request_id="same")])
    db.insert_samples([sample("canary", "delete my account", ts=2 * S, request_id="same")])
    assert partners(db) == set()


def test_two_users_asking_the_same_pair_by_input_whatever_their_request_ids(db):
    """In the steps each request reaches one variant: its own partner never comes, so answers to the
    same input from two requests are the pair."""
    db.insert_samples([sample("primary", "hi", ts=1 * S, request_id="a")])
    db.insert_samples([sample("canary", "hi", ts=2 * S, request_id="b")])
    assert partners(db) == {("a", "b")}


def test_a_mirrored_answer_waits_for_the_answer_to_its_own_request(db):
    db.insert_samples([sample("primary", "hi", ts=1 * S, request_id="a")])
    db.insert_samples([sample("canary", "hi", ts=2 * S, request_id="b", mirrored=True)])  # b's copy
    assert partners(db) == set(), "neither takes the other: each one's own partner is on its way"
    db.insert_samples([sample("primary", "hi", ts=3 * S, request_id="b")])
    db.insert_samples([sample("canary", "hi", ts=4 * S, request_id="a", mirrored=True)])
    assert partners(db) == {("a", "a"), ("b", "b")}


def test_without_request_ids_the_same_input_pairs_within_the_window_only(tmp_path):
    storage = Storage(":memory:", pair_window_us=60 * S)
    try:
        storage.insert_samples([sample("primary", "q", ts=0), sample("canary", "q", ts=61 * S)])
        assert partners(storage) == set(), "61 s apart: beyond the 60 s window"
        storage.insert_samples([sample("primary", "q", ts=100 * S)])
        assert len(partners(storage)) == 1, "39 s from the canary's answer: paired"
    finally:
        storage.close()
    with pytest.raises(ValueError):
        Storage(":memory:", pair_window_us=0)


def test_mirrored_is_kept_counted_and_streamed(db):
    db.insert_samples([sample("primary", "q", ts=1 * S, request_id="r"),
                       sample("canary", "q", ts=2 * S, request_id="r", mirrored=True),
                       sample("canary", "other", ts=3 * S, status="unsampled", mirrored=True)])
    assert db.counts(R, "canary", 0, 10 * S).mirrored == 2
    assert db.counts(R, "primary", 0, 10 * S).mirrored == 0
    (pair_id,) = db.pending_pair_ids()
    pair = db.get_pair(pair_id)
    db.finish_sample(pair.primary_id, "scored", score=0.9)
    db.finish_sample(pair.canary_id, "scored", score=0.2)
    db.finish_pair(pair_id, "done", winner="primary")
    assert [p.mirrored for p in db.pairs_after(R).pairs] == [True]


def test_a_version_2_database_gets_the_mirrored_column_and_keeps_its_data(tmp_path):
    path = str(tmp_path / "judge.db")
    old = Storage(path)
    old.insert_samples([sample("primary", "q", ts=1 * S), sample("canary", "q", ts=2 * S)])
    old.close()
    with sqlite3.connect(path) as raw:
        raw.executescript("DROP INDEX samples_unpaired_request; ALTER TABLE samples DROP COLUMN mirrored;"
                          " PRAGMA user_version = 2;")
    upgraded = Storage(path)
    try:
        assert upgraded._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert upgraded.counts(R, "canary", 0, 10 * S).ingested == 1
        assert len(partners(upgraded)) == 1
        upgraded.insert_samples([sample("canary", "new", ts=3 * S, mirrored=True)])
        assert upgraded.counts(R, "canary", 0, 10 * S).mirrored == 1
    finally:
        upgraded.close()


def test_a_version_5_database_gets_the_client_time_column_and_keeps_its_data(tmp_path):
    path = str(tmp_path / "judge.db")
    old = Storage(path)
    old.insert_samples([sample("canary", "q", ts=2 * S)])
    old.close()
    with sqlite3.connect(path) as raw:
        raw.executescript("ALTER TABLE samples DROP COLUMN client_ts; PRAGMA user_version = 5;")
    upgraded = Storage(path)
    try:
        assert upgraded._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        upgraded.insert_samples([sample("canary", "new", ts=3 * S, client_ts=1 * S)])
        rows = upgraded._db.execute("SELECT ts, client_ts FROM samples ORDER BY id").fetchall()
        assert [tuple(r) for r in rows] == [(2 * S, None), (3 * S, 1 * S)]
        assert upgraded.counts(R, "canary", 0, 10 * S).ingested == 2
    finally:
        upgraded.close()


def test_the_judge_wide_spend_is_counted_by_the_hour_and_kept_a_day_past_retention(db):
    from canarist.judge.storage import HOUR_US
    ids = db.insert_samples([sample("canary", f"q{i}", release=f"ns/r{i}") for i in range(3)]).pending_samples
    day = 1000 * 24 * HOUR_US  # an hour boundary
    db.finish_sample(ids[0], "scored", score=1.0, tokens=7, at=day - 30 * HOUR_US)
    db.finish_sample(ids[1], "scored", score=1.0, tokens=5, at=day + 10)
    db.finish_sample(ids[2], "scored", score=1.0, tokens=3, at=day + HOUR_US - 1)
    assert db.tokens_spent_since(day + HOUR_US - 1) == 8, "whole hours: the hour holding `since` counts"
    assert db.tokens_spent_since(day - 30 * HOUR_US) == 15
    db.delete_older_than(day - 2 * HOUR_US)  # retention 2 h before `day`: the 30 h old spend is a day older
    assert db.tokens_spent_since(0) == 8
