"""GET /v1/pairs over real HTTP with a fake scorer: the ordered, exactly-once stream of complete pairs."""

from __future__ import annotations

import asyncio

import pytest

from canarist.judge.sampling import fingerprint
from canarist.judge.service import parse_time

from .test_judge_service import R, FakeScorer, at, config, judge, post, run, s


async def pairs(client, status=200, **query) -> dict:
    resp = await client.get("/v1/pairs", params={"release": R, **query})
    assert resp.status == status, await resp.text()
    return await resp.json()


async def drain(client, cursor: str | None = None, **query) -> tuple[list[dict], str]:
    """Every pair after `cursor`, page by page, and the last cursor."""
    seen: list[dict] = []
    while True:
        answer = await pairs(client, **query, **({"after": cursor} if cursor else {}))
        seen += answer["pairs"]
        cursor = answer["cursor"]
        if not answer["more"]:
            return seen, cursor


def both(i: int, p: str, c: str, ts: float = 0, **kw) -> list[dict]:
    return [s("primary", f"q{i}", p, ts=ts, **kw), s("canary", f"q{i}", c, ts=ts, **kw)]


def test_the_answer_carries_scores_outcome_and_nulls():
    async def scenario():
        async with judge(config(), FakeScorer()) as (client, service):
            await post(client, {"samples": both(0, "0.2 p", "0.9 c", segment="eu") + both(1, "0.7 p", "0.4 c")
                                + both(2, "0.5 p", "0.5 c") + both(3, "0.6 p", "boom")})
            await service.wait_idle()
            answer = await pairs(client)
            assert answer["more"] is False and isinstance(answer["cursor"], str)
            got = {p["fingerprint"]: p for p in answer["pairs"]}
            assert set(got) == {fingerprint(f"q{i}") for i in range(4)}
            first = got[fingerprint("q0")]
            assert set(first) == {"id", "at", "fingerprint", "primaryScore", "canaryScore", "outcome", "segment", "mirrored"}
            assert (first["primaryScore"], first["canaryScore"], first["outcome"], first["segment"]) == \
                (0.2, 0.9, "win", "eu")
            assert parse_time(first["at"], "at") > 0
            assert (got[fingerprint("q1")]["outcome"], got[fingerprint("q2")]["outcome"]) == ("loss", "tie")
            # the canary's score errored and so did the comparison ("boom" is no number): nulls, still listed
            boom = got[fingerprint("q3")]
            assert (boom["primaryScore"], boom["canaryScore"], boom["outcome"], boom["segment"]) == \
                (0.6, None, None, None)
            ids = [p["id"] for p in answer["pairs"]]
            assert ids == sorted(ids) and len(set(ids)) == 4
    run(scenario())


def test_pages_with_after_see_every_pair_exactly_once_in_completion_order():
    async def scenario():
        async with judge(config(), FakeScorer()) as (client, service):
            await post(client, {"samples": [x for i in range(7) for x in both(i, "0.5 p", "0.6 c", ts=i)]})
            await service.wait_idle()
            first = await pairs(client, limit="3")
            assert (len(first["pairs"]), first["more"]) == (3, True)
            second = await pairs(client, limit="3", after=first["cursor"])
            third = await pairs(client, limit="3", after=second["cursor"])
            assert (len(second["pairs"]), second["more"], len(third["pairs"]), third["more"]) == (3, True, 1, False)
            ids = [p["id"] for page in (first, second, third) for p in page["pairs"]]
            assert ids == sorted(ids) and len(set(ids)) == 7
            ats = [parse_time(p["at"], "at") for page in (first, second, third) for p in page["pairs"]]
            assert ats == sorted(ats)
            idle = await pairs(client, after=third["cursor"])
            assert idle == {"pairs": [], "cursor": third["cursor"], "more": False}
            # pairs completed later come after the cursor, once
            await post(client, {"samples": both(7, "0.1 p", "0.1 c", ts=8) + both(8, "0.3 p", "0.2 c", ts=9)})
            await service.wait_idle()
            later, _ = await drain(client, third["cursor"], limit="1")
            assert sorted(p["fingerprint"] for p in later) == sorted([fingerprint("q7"), fingerprint("q8")])
            assert len(later) == 2 and min(p["id"] for p in later) > max(ids)
            everything, _ = await drain(client, limit="4")
            assert len(everything) == 9 and [p["id"] for p in everything] == sorted(ids + [p["id"] for p in later])
    run(scenario())


def test_a_pair_appears_only_when_its_last_part_is_judged():
    async def scenario():
        gate = asyncio.Event()
        scorer = FakeScorer(gate=gate)
        async with judge(config(concurrency=3), scorer) as (client, service):
            await post(client, {"samples": both(0, "0.5 p", "0.9 c")})
            for _ in range(1000):  # up to 10 s: all three calls (two scores, one comparison) in flight
                if scorer.in_flight == 3:
                    break
                await asyncio.sleep(0.01)
            before = await pairs(client)
            assert before["pairs"] == [] and before["more"] is False
            gate.set()
            await service.wait_idle()
            after = await pairs(client, after=before["cursor"])
            assert [(p["primaryScore"], p["canaryScore"], p["outcome"]) for p in after["pairs"]] == [(0.5, 0.9, "win")]
    run(scenario())


class HoldingScorer(FakeScorer):
    """Holds the scoring of answers containing "slow" until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def score(self, request: str, response: str):
        if "slow" in response:
            await self.release.wait()
        return await super().score(request, response)


def test_the_stream_is_ordered_by_completion_not_by_arrival():
    async def scenario():
        scorer = HoldingScorer()
        async with judge(config(concurrency=4), scorer) as (client, service):
            await post(client, {"samples": both(0, "0.5 p", "0.9 slow c", ts=0)})
            await post(client, {"samples": both(1, "0.5 p", "0.6 c", ts=1)})
            for _ in range(1000):  # up to 10 s
                early = await pairs(client)
                if early["pairs"]:
                    break
                await asyncio.sleep(0.01)
            assert [p["fingerprint"] for p in early["pairs"]] == [fingerprint("q1")]
            scorer.release.set()
            await service.wait_idle()
            rest = await pairs(client, after=early["cursor"])
            assert [p["fingerprint"] for p in rest["pairs"]] == [fingerprint("q0")]
            assert rest["pairs"][0]["id"] > early["pairs"][0]["id"]
            assert [p["fingerprint"] for p in (await pairs(client))["pairs"]] == [fingerprint("q1"), fingerprint("q0")]
    run(scenario())


def test_since_and_revision_filters():
    async def scenario():
        async with judge(config(), FakeScorer()) as (client, service):
            await post(client, {"samples": [
                *both(0, "0.5 p", "0.5 c", ts=0, revision="r0"),
                s("primary", "q1", "0.5 p", ts=5, revision="p1"), s("canary", "q1", "0.5 c", ts=20, revision="c1"),
                s("primary", "q2", "0.5 p", ts=15, revision="p1"), s("canary", "q2", "0.5 c", ts=20, revision="c1"),
                s("primary", "q3", "0.5 p", ts=15, revision="p1"), s("canary", "q3", "0.5 c", ts=20, revision="c2"),
            ]})
            await service.wait_idle()

            async def fps(**query) -> set[str]:
                return {p["fingerprint"] for p in (await pairs(client, **query))["pairs"]}

            assert await fps(since=at(10)) == {fingerprint("q2"), fingerprint("q3")}, "both samples at/after since"
            assert await fps(since=at(15)) == {fingerprint("q2"), fingerprint("q3")}, "since is inclusive"
            assert await fps(canaryRevision="c1") == {fingerprint("q1"), fingerprint("q2")}
            assert await fps(primaryRevision="p1", canaryRevision="c2", since=at(10)) == {fingerprint("q3")}
            assert await fps(primaryRevision="r0") == {fingerprint("q0")}
            # a filter that leaves everything out still moves the cursor to the end of the stream
            nothing = await pairs(client, canaryRevision="none")
            assert nothing["pairs"] == [] and nothing["cursor"] == (await pairs(client))["cursor"]
    run(scenario())


def test_a_cursor_survives_a_restart_on_the_same_database(tmp_path):
    db = str(tmp_path / "judge.db")
    seen: list[dict] = []

    async def first() -> str:
        async with judge(config(db=db), FakeScorer()) as (client, service):
            await post(client, {"samples": [x for i in range(5) for x in both(i, "0.5 p", "0.7 c", ts=i)]})
            await service.wait_idle()
            page = await pairs(client, limit="3")
            seen.extend(page["pairs"])
            assert page["more"] is True
            return page["cursor"]

    async def second(cursor: str) -> None:
        async with judge(config(db=db), FakeScorer()) as (client, service):
            await post(client, {"samples": both(9, "0.1 p", "0.2 c", ts=9)})
            await service.wait_idle()
            rest, _ = await drain(client, cursor, limit="2")
            seen.extend(rest)

    run(second(run(first())))
    assert [p["fingerprint"] for p in seen[-1:]] == [fingerprint("q9")]
    assert len(seen) == 6 and len({p["id"] for p in seen}) == 6
    assert [p["id"] for p in seen] == sorted(p["id"] for p in seen)


def test_a_cursor_of_another_database_answers_410():
    async def scenario():
        async with judge(config(), FakeScorer()) as (one, _), judge(config(), FakeScorer()) as (two, _):
            cursor = (await pairs(one))["cursor"]
            gone = await pairs(two, status=410, after=cursor)
            assert gone["error"].startswith("after: the cursor is from another judge database")
    run(scenario())


@pytest.mark.parametrize("query, message", [
    ({"release": None}, "release: query parameter is required"),
    ({"release": "no-slash"}, "release: must be the CanaryRelease"),
    ({"cursor": "x"}, "cursor: unknown query parameter"),
    ({"canaryRevision": ""}, "canaryRevision: is empty"),
    ({"after": ""}, "after: is empty"),
    ({"after": "12"}, "after: '12' is not a cursor"),
    ({"after": "abc.x1"}, "after: 'abc.x1' is not a cursor"),
    ({"after": "abc." + "9" * 30}, "after: "),
    ({"since": "yesterday"}, "since: must be an RFC 3339"),
    ({"limit": "0"}, "limit: must be a whole number from 1 to 5000"),
    ({"limit": "5001"}, "limit: must be a whole number from 1 to 5000"),
    ({"limit": "-1"}, "limit: must be a whole number"),
    ({"limit": "ten"}, "limit: must be a whole number"),
])
def test_bad_pairs_queries_answer_400_naming_the_parameter(query, message):
    async def scenario():
        async with judge(config(), FakeScorer()) as (client, _):
            params = {k: v for k, v in {"release": R, **query}.items() if v is not None}
            resp = await client.get("/v1/pairs", params=params)
            assert resp.status == 400
            assert (await resp.json())["error"].startswith(message)
            resp = await client.get(f"/v1/pairs?release={R}&limit=5&limit=5")
            assert resp.status == 400 and (await resp.json())["error"].startswith("limit: given more than once")
    run(scenario())


def test_limit_bounds_are_accepted():
    async def scenario():
        async with judge(config(), FakeScorer()) as (client, service):
            await post(client, {"samples": both(0, "0.5 p", "0.5 c") + both(1, "0.5 p", "0.5 c")})
            await service.wait_idle()
            assert [len((await pairs(client, limit=n))["pairs"]) for n in ("1", "5000")] == [1, 2]
    run(scenario())
