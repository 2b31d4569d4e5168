"""Retention and deletion on request: exactly what is old (or of the release) goes, nothing else."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from canarist.judge.config import ConfigError, JudgeConfig
from canarist.judge.sampling import fingerprint
from canarist.judge.service import SERVICE_KEY, create_app
from canarist.judge.storage import Deleted, NewSample, Storage

from .test_judge_service import FakeScorer, metric, parse_metrics

R, OTHER = "prod/bot", "prod/other"
S = 1_000_000
CUT = 1000 * S  # the retention cutoff in these tests: ingested before it is old


def sample(variant="canary", request="q", status="pending", release=R, **kw) -> NewSample:
    return NewSample(release=release, variant=variant, request=request, response="a " + request,
                     fingerprint=fingerprint(request), ts=0, status=status, **kw)


@pytest.fixture
def db():
    storage = Storage(":memory:")
    yield storage
    storage.close()


def rows(db: Storage, table: str) -> int:
    return db._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def finish(db: Storage, result, score: float = 0.5) -> None:
    for sid in result.pending_samples:
        db.finish_sample(sid, "scored", score=score, tokens=1)
    for pid in result.pending_pairs:
        db.finish_pair(pid, "done", winner="tie", tokens=1)


def test_retention_deletes_exactly_what_is_old_and_final(db):
    # old and final: 3 unpaired samples (one unsampled), 2 complete pairs (4 samples) -> 7 samples, 2 pairs go
    finish(db, db.insert_samples([sample(request=f"u{i}") for i in range(2)] +
                                 [sample(request="x", status="unsampled")], ingested_at=CUT - 1))
    finish(db, db.insert_samples([sample("primary", f"p{i}") for i in range(2)] +
                                 [sample("canary", f"p{i}") for i in range(2)], ingested_at=CUT - 10 * S))
    # stays: ingested at the cutoff exactly (2 samples), old but pending (1 sample), an old sample whose
    # pair's other sample is young (pair + 2 samples), an old final pair whose comparison is pending (+2)
    finish(db, db.insert_samples([sample(request="edge"), sample(request="edge2", status="unsampled")],
                                 ingested_at=CUT))
    db.insert_samples([sample(request="still pending")], ingested_at=1)
    finish(db, db.insert_samples([sample("primary", "young")], ingested_at=CUT - 5 * S))
    finish(db, db.insert_samples([sample("canary", "young")], ingested_at=CUT + 5 * S))
    waiting = db.insert_samples([sample("primary", "w"), sample("canary", "w")], ingested_at=CUT - 5 * S)
    for sid in waiting.pending_samples:
        db.finish_sample(sid, "scored", score=0.5)
    assert (rows(db, "samples"), rows(db, "pairs")) == (7 + 7, 2 + 2)

    deleted = db.delete_older_than(CUT)
    assert (deleted.samples, deleted.pairs) == (7, 2)
    assert (rows(db, "samples"), rows(db, "pairs")) == (7, 2)
    left = {r[0] for r in db._db.execute("SELECT fingerprint FROM samples")}
    assert left == {fingerprint(q) for q in ("edge", "edge2", "still pending", "young", "w")}
    assert db.count_pending() == (1, 1), "pending work is never deleted"
    assert db.delete_older_than(CUT) == Deleted(), "a second run finds nothing more"
    # once finished, the old pending work goes on the next run
    db.finish_pair(waiting.pending_pairs[0], "done", winner="tie")
    db.finish_sample(db.pending_sample_ids()[0], "error", error="x")
    again = db.delete_older_than(CUT)
    assert (again.samples, again.pairs) == (3, 1)


def test_a_release_with_no_sample_left_loses_its_token_usage_and_its_pairs_keep_their_numbers(db):
    old = db.insert_samples([sample("primary", "q"), sample("canary", "q")], ingested_at=1)
    finish(db, old)
    young = db.insert_samples([sample("primary", "q", release=OTHER), sample("canary", "q", release=OTHER)],
                              ingested_at=CUT)
    finish(db, young)
    assert (db.tokens_used(R), db.tokens_used(OTHER)) == (3, 3)
    assert [p.seq for p in db.pairs_after(R).pairs] == [1] and [p.seq for p in db.pairs_after(OTHER).pairs] == [2]
    deleted = db.delete_older_than(CUT)
    assert deleted == Deleted(samples=2, pairs=1, releases_usage=1, tokens=3)
    assert (db.tokens_used(R), db.tokens_used(OTHER)) == (0, 3)
    page = db.pairs_after(R, 1)
    assert (page.pairs, page.cursor) == ([], 1), "a cursor past deleted pairs stays valid"
    # The counter goes on: had it restarted from the highest number left, this pair would get 2 again
    # (or 1), and a client holding cursor 1 for R would miss it.
    finish(db, db.insert_samples([sample("primary", "r"), sample("canary", "r")], ingested_at=CUT))
    assert [p.seq for p in db.pairs_after(R, 1).pairs] == [3]


def test_deleting_the_highest_numbers_never_hands_them_out_again(db):
    for i in range(3):
        finish(db, db.insert_samples([sample("primary", f"q{i}"), sample("canary", f"q{i}")], ingested_at=1))
    assert db.delete_older_than(CUT).pairs == 3
    finish(db, db.insert_samples([sample("primary", "n"), sample("canary", "n")], ingested_at=CUT))
    assert [p.seq for p in db.pairs_after(R).pairs] == [4]


def test_retention_works_in_chunks(db):
    n = 1234  # more than two chunks of 500
    finish(db, db.insert_samples([sample(request=f"q{i}", status="unsampled") for i in range(n)], ingested_at=1))
    assert db.delete_older_than(CUT).samples == n and rows(db, "samples") == 0


def test_delete_release_removes_everything_of_that_release_only(db):
    finish(db, db.insert_samples([sample("primary", "q"), sample("canary", "q"), sample(request="u")]))
    db.insert_samples([sample("primary", "p"), sample("canary", "p")])  # pending work goes too
    db.insert_samples([sample(request="o", release=OTHER)])
    assert db.delete_release(R) == Deleted(samples=5, pairs=2, releases_usage=1, tokens=4)
    assert (rows(db, "samples"), rows(db, "pairs")) == (1, 0)
    assert db.count_pending() == (1, 0)
    assert db.delete_release(R) == Deleted()


def test_database_bytes_is_page_count_times_page_size(db):
    pages, size = (db._db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
    assert db.database_bytes() == pages * size > 0


def test_retention_option_takes_seconds_or_units():
    assert JudgeConfig().retention == 14 * 86400
    assert JudgeConfig.from_sources({}, {"CANARIST_JUDGE_RETENTION": "36h"}).retention == 36 * 3600
    assert JudgeConfig.from_sources({"retention": "90"}, {}).retention == 90
    assert JudgeConfig(retention="0").retention == 0
    with pytest.raises(ConfigError, match="retention"):
        JudgeConfig(retention="-1d")
    assert JudgeConfig(timeout=10, retries=2).lease == 60, "2 x timeout x (retries + 1)"
    assert JudgeConfig.from_sources({}, {"CANARIST_JUDGE_CLAIM_LEASE": "3"}).lease == 3


def test_delete_endpoint_retention_task_and_size_gauge():
    async def scenario():
        cfg = JudgeConfig(db=":memory:", sample_rate=1.0, concurrency=2, shutdown_grace=0.1, retention=3600)
        async with TestClient(TestServer(create_app(cfg, FakeScorer(), registry=CollectorRegistry()),
                                         host="127.0.0.1")) as client:
            service = client.app[SERVICE_KEY]
            assert service.retention_interval == 360
            body = {"samples": [{"release": R, "variant": v, "request": "q", "response": "0.5 a"}
                                for v in ("primary", "canary")]}
            assert (await client.post("/v1/samples", json=body)).status == 202
            await service.wait_idle()
            # an hour and a second later, everything ingested now is old
            deleted = await service.apply_retention(now=service.storage.pairs_after(R).pairs[0].completed_at
                                                    + 3601 * S)
            assert (deleted.samples, deleted.pairs) == (2, 1)
            assert (await client.post("/v1/samples", json=body)).status == 202
            await service.wait_idle()
            resp = await client.delete(f"/v1/releases/{R}")
            assert resp.status == 200
            assert await resp.json() == {"release": R, "deleted": {"samples": 2, "pairs": 1, "tokens": 21}}
            assert (await client.delete("/v1/releases/Bad_NS/x")).status == 400
            m = parse_metrics(await (await client.get("/metrics")).text())
            assert metric(m, "canarist_judge_database_bytes") == service.storage.database_bytes() > 0
            assert metric(m, "canarist_judge_retention_deleted_total", table="samples") == 4
    asyncio.run(asyncio.wait_for(scenario(), 30))
