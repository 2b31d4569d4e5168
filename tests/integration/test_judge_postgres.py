"""The judge on a real PostgreSQL server (a throwaway one on 127.0.0.1, started once for this module).

1. The PostgreSQL backend behaves like SQLite: the storage tests run on both.
2. Two `canarist judge serve` replicas on one database share one stream of samples: every sample
   scored once, every pair compared once (counted at the scripted LLM and in the rows).
3. A replica SIGKILLed with work in flight: the other one takes that work over once the claims'
   lease expires, and finishes everything.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from canarist.devstack.postgres import LocalPostgres
from canarist.devstack.procs import stop_process_group, wait_until
from canarist.devstack.scripted_llm import ScriptedLLM
from canarist.judge.storage import SqlStorage, Storage, open_storage

from ..unit import test_judge_retention as retention_tests
from ..unit import test_judge_storage as storage_tests
from .test_judge_process import SECRET, JudgeProcess, call, start_judge

RELEASE = "prod/calc"
S = 1_000_000


@pytest.fixture(scope="module")
def pg() -> Iterator[LocalPostgres]:
    with LocalPostgres.start() as server:
        yield server


_names = iter(range(1, 10**6))


def fresh_db(pg: LocalPostgres) -> str:
    return pg.create_database(f"judge{next(_names)}")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, pg) -> Iterator[SqlStorage]:
    storage = Storage(":memory:") if request.param == "sqlite" else open_storage(fresh_db(pg))
    yield storage
    storage.close()


# -- 1. the same behaviour on both backends ---------------------------------------------------------

CONTRACT = [
    storage_tests.test_insert_counts_and_keeps_every_field,
    storage_tests.test_sampled_answers_of_both_variants_to_one_input_are_paired_once,
    storage_tests.test_pairing_prefers_the_answer_nearest_in_time,
    storage_tests.test_pairs_of_exhausted_releases_are_skipped_at_once,
    storage_tests.test_finish_records_outcome_once_and_adds_tokens,
    storage_tests.test_verdict_queries_by_window_variant_and_revision,
    storage_tests.test_pairwise_counts_by_canary_time_from_either_side,
    storage_tests.test_failed_samples_carry_the_other_answer_and_page,
    storage_tests.test_other_answer_comes_from_the_nearest_sampled_answer_never_an_unsampled_one,
    storage_tests.test_unsampled_samples_are_counted_but_their_texts_not_stored,
    storage_tests.test_a_pair_enters_the_stream_when_its_last_part_finishes_whatever_the_order,
    storage_tests.test_a_pair_of_samples_already_final_completes_when_it_is_made,
    storage_tests.test_pages_are_exact_and_filters_move_the_cursor_past_what_they_leave_out,
    storage_tests.test_request_ids_pair_the_answers_to_the_very_same_request_among_repeated_inputs,
    storage_tests.test_unique_inputs_pair_one_to_one,
    storage_tests.test_a_request_id_reused_for_another_input_does_not_pair_two_inputs,
    storage_tests.test_two_users_asking_the_same_pair_by_input_whatever_their_request_ids,
    storage_tests.test_a_mirrored_answer_waits_for_the_answer_to_its_own_request,
    storage_tests.test_mirrored_is_kept_counted_and_streamed,
    retention_tests.test_retention_deletes_exactly_what_is_old_and_final,
    retention_tests.test_a_release_with_no_sample_left_loses_its_token_usage_and_its_pairs_keep_their_numbers,
    retention_tests.test_deleting_the_highest_numbers_never_hands_them_out_again,
    retention_tests.test_delete_release_removes_everything_of_that_release_only,
]


@pytest.mark.parametrize("case", CONTRACT, ids=[c.__name__.removeprefix("test_")[:60] for c in CONTRACT])
def test_storage_contract(backend, case):
    case(backend)


def test_claims_are_exclusive_and_expired_ones_are_taken_over(backend):
    ids = backend.insert_samples([storage_tests.sample(request=f"q{i}") for i in range(5)]).pending_samples
    now = 1000 * S
    a = backend.claim("sample", "a", 10 * S, 3, now=now)
    b = backend.claim("sample", "b", 10 * S, 10, now=now)
    assert (a, b) == (list(ids[:3]), list(ids[3:])), "oldest first, never the same job twice"
    assert backend.claim("sample", "c", 10 * S, 10, now=now + 10 * S) == [], "a claim lasts its whole lease"
    assert backend.count_unclaimed(now=now) == 0
    assert backend.finish_sample(ids[0], "scored", score=1.0)
    taken = backend.claim("sample", "c", 10 * S, 10, now=now + 10 * S + 1)  # a's and b's leases are over
    assert taken == list(ids[1:])
    assert not backend.renew_claim("sample", ids[1], "a", 10 * S, now=now + 11 * S), "c has it now"
    assert backend.renew_claim("sample", ids[1], "c", 10 * S, now=now + 11 * S)
    assert backend.release_claims("c") == 4 and backend.count_unclaimed(now=now) == 4


def test_concurrent_writers_complete_every_pair_once_with_gapless_numbers(pg):
    """Two connections finish the two samples of each pair at the same moment, like two replicas."""
    url = fresh_db(pg)
    one, two = open_storage(url), open_storage(url)
    try:
        made = [one.insert_samples([storage_tests.sample("primary", f"q{i}"), storage_tests.sample("canary", f"q{i}")])
                for i in range(60)]
        for got in made:
            assert one.finish_pair(got.pending_pairs[0], "done", winner="tie")
        barrier = threading.Barrier(2)
        finished: list[bool] = []

        def finish(storage: SqlStorage, index: int) -> None:
            barrier.wait()
            finished.extend(storage.finish_sample(got.pending_samples[index], "scored", score=0.5) for got in made)

        threads = [threading.Thread(target=finish, args=(s, i)) for s, i in ((one, 0), (two, 1))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert finished == [True] * 120
        page = one.pairs_after(storage_tests.R, limit=1000)
        assert [p.seq for p in page.pairs] == list(range(1, 61)), "each pair numbered once, no gaps"
    finally:
        one.close()
        two.close()


def test_two_replicas_starting_at_once_create_the_schema_once(pg):
    url = fresh_db(pg)
    opened: list[SqlStorage] = []
    threads = [threading.Thread(target=lambda: opened.append(open_storage(url))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert len(opened) == 4 and len({s.database_id for s in opened}) == 1
    finally:
        for storage in opened:
            storage.close()


# -- 2. and 3. judge replicas as processes -----------------------------------------------------------


@pytest.fixture
def slow_llm(tmp_path) -> Iterator[ScriptedLLM]:
    with ScriptedLLM.start(api_key=SECRET, workdir=tmp_path / "llm", latency_ms=100) as running:
        yield running


def replica(tmp_path: Path, llm: ScriptedLLM, url: str, name: str, lease: float) -> JudgeProcess:
    return start_judge(tmp_path, llm, "--db", url, "--concurrency", "2", "--queue-size", "2",
                       "--claim-lease", str(lease), "--timeout", "5", "--retries", "0", name=name)


def stream_of_samples(n: int) -> list[dict]:
    """n inputs, each answered by both variants (with one request id: they pair whoever ingests them)."""
    out = []
    for i in range(n):
        a, b = 10 + i, 20 + i
        for variant in ("primary", "canary"):
            out.append({"release": RELEASE, "variant": variant, "request": f"What is {a} + {b}?",
                        "response": f"The answer is {a + b}.", "requestId": f"r{i}"})
    return out


def post_alternately(replicas: list[JudgeProcess], samples: list[dict], batch: int = 3) -> None:
    for k in range(0, len(samples), batch):
        code, body = call(replicas[(k // batch) % len(replicas)].url + "/v1/samples", {"samples": samples[k:k + batch]})
        assert code == 202, body


def rows(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {
            "scored": conn.execute("SELECT count(*) FROM samples WHERE status = 'scored'").fetchone()[0],
            "samples": conn.execute("SELECT count(*) FROM samples").fetchone()[0],
            "pairs_done": conn.execute("SELECT count(*) FROM pairs WHERE status = 'done'").fetchone()[0],
            "pairs": conn.execute("SELECT count(*) FROM pairs").fetchone()[0],
            "pending": conn.execute("SELECT (SELECT count(*) FROM samples WHERE status = 'pending')"
                                    " + (SELECT count(*) FROM pairs WHERE status = 'pending')").fetchone()[0],
        }


def judged_by(judge: JudgeProcess) -> int:
    text = judge.get("/metrics")[1].decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("canarist_judge_samples_judged_total{") and 'outcome="scored"' in line)


def pair_ids(judge: JudgeProcess) -> list[int]:
    code, body = judge.get("/v1/pairs", release=RELEASE, limit=5000)
    assert code == 200, body
    return [p["id"] for p in json.loads(body)["pairs"]]


def test_two_replicas_share_one_stream_and_score_everything_exactly_once(pg, slow_llm, tmp_path):
    url = fresh_db(pg)
    replicas = [replica(tmp_path, slow_llm, url, f"judge{i}", lease=30) for i in range(2)]
    try:
        n = 20
        post_alternately(replicas, stream_of_samples(n))
        wait_until(lambda: rows(url)["pending"] == 0, 60, "every sample and pair to be judged")
        assert rows(url) == {"scored": 2 * n, "samples": 2 * n, "pairs_done": n, "pairs": n, "pending": 0}
        # one LLM call per sample, two per pair (both orders): nothing was asked twice
        assert slow_llm.stats()["requests"] == 2 * n + 2 * n
        work = [judged_by(r) for r in replicas]
        assert sum(work) == 2 * n and min(work) > 0, f"both replicas did part of the work: {work}"
        assert pair_ids(replicas[0]) == pair_ids(replicas[1]) == list(range(1, n + 1))
    finally:
        for r in replicas:
            stop_process_group(r.proc.pid, grace=10)


def test_a_killed_replicas_work_is_taken_over_after_its_lease(pg, slow_llm, tmp_path):
    url = fresh_db(pg)
    lease = 2.0
    doomed, survivor = (replica(tmp_path, slow_llm, url, name, lease=lease) for name in ("doomed", "survivor"))
    try:
        slow_llm.configure(latency_ms=400)  # long enough that the doomed replica has calls in flight
        n = 16
        post_alternately([doomed, survivor], stream_of_samples(n))
        with psycopg.connect(url) as conn:
            wait_until(lambda: conn.execute(
                "SELECT count(*) FROM samples WHERE strpos(claimed_by, %s) > 0",
                (f"/{doomed.proc.pid}/",)).fetchone()[0] > 0, 20, "the doomed replica to claim work")
        stop_process_group(doomed.proc.pid, grace=0)  # SIGTERM then SIGKILL at once: no graceful hand-back
        doomed.proc.wait(10)
        killed_at = time.monotonic()
        wait_until(lambda: rows(url)["pending"] == 0, 60, "the survivor to finish everything")
        assert rows(url) == {"scored": 2 * n, "samples": 2 * n, "pairs_done": n, "pairs": n, "pending": 0}
        assert pair_ids(survivor) == list(range(1, n + 1)), "every pair in the stream once"
        assert time.monotonic() - killed_at < 60
    finally:
        for r in (doomed, survivor):
            stop_process_group(r.proc.pid, grace=10)
