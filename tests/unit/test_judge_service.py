"""The judge service over real HTTP on 127.0.0.1, with a fake scorer (no LLM)."""

from __future__ import annotations

import asyncio
import json
import math
import re
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from canarist.judge.config import JudgeConfig
from canarist.judge.sampling import fingerprint, is_sampled
from canarist.judge.service import SERVICE_KEY, create_app, format_time, parse_time
from canarist.judge.stats import mean_ci95
from canarist.judge.storage import now_us
from canarist.judge.types import Comparison, JudgeError, Score

R = "prod/support-bot"
T0 = "2026-11-27T10:00:00Z"
T0_US = parse_time(T0, "t")
WINDOW = {"since": T0, "until": "2026-11-27T11:00:00Z"}


def at(seconds: float) -> str:
    return format_time(T0_US + int(seconds * 1_000_000))


class FakeScorer:
    """Scores a response by the number it starts with ("0.9 because..." -> 0.9); "boom" fails.

    compare() prefers the answer with the higher number, "tie" on equal numbers. `gate`, when set,
    holds every call until it opens; in_flight/max_in_flight count concurrent calls.
    """

    def __init__(self, tokens: int = 10, gate: asyncio.Event | None = None) -> None:
        self.tokens, self.gate = tokens, gate
        self.in_flight = self.max_in_flight = 0
        self.scored: list[tuple[str, str]] = []
        self.compared: list[tuple[str, str, str]] = []
        self.closed = False

    @staticmethod
    def value(text: str) -> float:
        return float(text.split()[0])

    async def _enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)

    async def score(self, request: str, response: str) -> Score:
        await self._enter()
        try:
            if "boom" in response:
                raise JudgeError("LLM unreachable after 3 attempts")
            self.scored.append((request, response))
            return Score(self.value(response), f"graded {response}", self.tokens)
        finally:
            self.in_flight -= 1

    async def compare(self, request: str, answer_a: str, answer_b: str) -> Comparison:
        await self._enter()
        try:
            self.compared.append((request, answer_a, answer_b))
            a, b = self.value(answer_a), self.value(answer_b)
            return Comparison("a" if a > b else "b" if b > a else "tie", "compared", 1)
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        self.closed = True


def config(**kw) -> JudgeConfig:
    return JudgeConfig(**{"db": ":memory:", "sample_rate": 1.0, "concurrency": 2, "shutdown_grace": 0.1, **kw})


@asynccontextmanager
async def judge(cfg: JudgeConfig, scorer: FakeScorer):
    app = create_app(cfg, scorer, registry=CollectorRegistry())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, app[SERVICE_KEY]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


ARRIVAL = "_arrival"  # test-only key: when the judge receives the sample (seconds after T0); never sent


def s(variant="canary", request="What is 17 + 25?", response="0.9 42", ts: float | None = 0, **kw) -> dict:
    """A sample the judge receives `ts` seconds after T0 (its own clock: see `post`); None = now."""
    body = {"release": R, "variant": variant, "request": request, "response": response, **kw}
    if ts is not None:
        body[ARRIVAL] = ts
    return body


def _arrivals(body) -> list[tuple[float | None, object]]:
    """The body as the judge receives it: consecutive samples of one arrival time in one request."""
    single = not (isinstance(body, dict) and "samples" in body)
    items = [body] if single else body["samples"]
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        return [(None, body)]
    runs: list[tuple[float | None, list]] = []
    for item in items:
        when = item.get(ARRIVAL)
        item = {k: v for k, v in item.items() if k != ARRIVAL}
        if runs and runs[-1][0] == when:
            runs[-1][1].append(item)
        else:
            runs.append((when, [item]))
    return [(when, part[0] if single else {**body, "samples": part}) for when, part in runs]


async def post(client, body, status=202) -> dict:
    """POST /v1/samples, with the judge's clock at each sample's arrival time (`s(ts=...)`).

    The judge orders samples by its own clock; a body whose samples arrive at different times is
    sent as one request per arrival, and the answers' counts are summed. A refused body (status
    other than 202) is sent whole, at its first sample's time.
    """
    service = client.server.app[SERVICE_KEY]
    runs = _arrivals(body)
    if status != 202 and len(runs) > 1:
        whole = {**body, "samples": [x for _, part in runs for x in part["samples"]]}
        runs = [(runs[0][0], whole)]
    total: dict = {}
    for when, part in runs:
        service.clock = now_us if when is None else (lambda at_us=T0_US + int(when * 1_000_000): at_us)
        resp = await client.post("/v1/samples", json=part)
        assert resp.status == status, await resp.text()
        answer = await resp.json()
        if status != 202:
            return answer
        total = {k: total.get(k, 0) + v for k, v in answer.items()}
    return total


async def verdict(client, variant="canary", status=200, **query) -> dict:
    resp = await client.get("/v1/verdict", params={"release": R, "variant": variant, **WINDOW, **query})
    assert resp.status == status, await resp.text()
    return await resp.json()


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = re.match(r'^([\w:]+)(?:\{([^}]*)\})? (\S+)$', line)
            assert m, line
            out[(m[1], frozenset(re.findall(r'(\w+)="([^"]*)"', m[2] or "")))] = float(m[3])
    return out


def metric(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# ---------------------------------------------------------------------------------------------


def test_ingest_score_and_verdict_numbers_are_exact():
    async def scenario():
        scorer = FakeScorer()
        async with judge(config(), scorer) as (client, service):
            answer = await post(client, {"samples": [
                s(request=f"q{i}", response=f"{score} text", ts=i, revision="new1")
                for i, score in enumerate((0.9, 0.8, 0.7, 0.2))
            ] + [s(request="late", response="0.0 x", ts=3600)]})       # until is exclusive
            assert answer == {"accepted": 5, "sampled": 5}
            await service.wait_idle()
            v = await verdict(client)
            mean, ci = mean_ci95([0.9, 0.8, 0.7, 0.2])
            assert v == {
                "release": R, "variant": "canary", "revision": None,
                "since": "2026-11-27T10:00:00Z", "until": "2026-11-27T11:00:00Z",
                "ingested": 4, "sampled": 4, "judged": 4, "pending": 0, "errors": 0, "skippedBudget": 0, "mirrored": 0, "flagged": 0,
                "meanScore": pytest.approx(0.65), "ci95": [pytest.approx(ci[0]), pytest.approx(ci[1])],
                "sumScores": pytest.approx(2.6), "sumSquares": pytest.approx(0.81 + 0.64 + 0.49 + 0.04),
                "passMark": 0.5, "failed": 1,
                "pairwise": {"wins": 0, "losses": 0, "ties": 0},
                "budget": {"tokensUsed": 50, "tokenBudget": None, "exhausted": False, "exhaustedBy": None,
                           "globalTokensUsed24h": None, "globalTokenBudget": None},
                "segment": None, "segments": {},
            }
            assert mean == pytest.approx(0.65) and ci[0] == pytest.approx(0.65 - 3.182446 * 0.310913 / 2, abs=1e-5)
            assert (await verdict(client, revision="new1"))["judged"] == 4
            assert (await verdict(client, revision="other"))["judged"] == 0
            empty = await verdict(client, variant="primary")
            assert (empty["ingested"], empty["meanScore"], empty["ci95"]) == (0, None, None)
            assert (empty["sumScores"], empty["sumSquares"]) == (0.0, 0.0), "sums over nothing are 0, not null"
            one = await verdict(client, until=at(1))
            assert (one["judged"], one["meanScore"], one["ci95"]) == (1, 0.9, None)
        assert scorer.closed
    run(scenario())


def test_a_single_sample_object_is_accepted_and_timestamp_defaults_to_now():
    async def scenario():
        async with judge(config(), FakeScorer()) as (client, service):
            assert await post(client, s(ts=None)) == {"accepted": 1, "sampled": 1}
            await service.wait_idle()
            since = format_time(now_us() - 60_000_000)
            recent = await client.get("/v1/verdict", params={"release": R, "variant": "canary", "since": since})
            assert (await recent.json())["judged"] == 1
    run(scenario())


def test_ingest_never_waits_on_scoring_and_concurrency_is_bounded():
    async def scenario():
        gate = asyncio.Event()
        scorer = FakeScorer(gate=gate)
        async with judge(config(concurrency=3, queue_size=2), scorer) as (client, service):
            body = {"samples": [s(request=f"q{i}", ts=i) for i in range(20)]}
            assert await asyncio.wait_for(post(client, body), 5) == {"accepted": 20, "sampled": 20}
            for _ in range(1000):  # up to 10 s: how soon the workers start depends on the machine
                if scorer.in_flight == 3:
                    break
                await asyncio.sleep(0.01)
            v = await verdict(client)
            assert (v["sampled"], v["pending"], v["judged"]) == (20, 20, 0)
            assert scorer.in_flight == 3
            metrics = parse_metrics(await (await client.get("/metrics")).text())
            assert metric(metrics, "canarist_judge_queue_depth") == 17
            gate.set()
            await service.wait_idle()
            assert scorer.max_in_flight == 3
            assert (await verdict(client))["judged"] == 20
    run(scenario())


def test_sampling_is_consistent_across_variants_and_pairs_are_compared():
    async def scenario():
        scorer = FakeScorer()
        async with judge(config(sample_rate=0.3), scorer) as (client, service):
            questions = [f"question {i}" for i in range(200)]
            primary = await post(client, {"samples": [s("primary", q, "0.5 p", ts=1) for q in questions]})
            # the canary's client spaces the same inputs differently: same fingerprints
            canary = await post(client, {"samples": [s("canary", f"  {q.replace(' ', '   ')} ", "0.5 c", ts=2)
                                                     for q in questions]})
            expected = sum(is_sampled(fingerprint(q), 0.3) for q in questions)
            assert 30 < expected < 90
            assert primary == canary == {"accepted": 200, "sampled": expected}
            await service.wait_idle()
            assert len(scorer.scored) == 2 * expected
            assert {normalize_q(r) for r, _ in scorer.scored} == \
                {q for q in questions if is_sampled(fingerprint(q), 0.3)}
            assert len(scorer.compared) == expected, "one comparison per input with both answers"
            v = await verdict(client)
            assert v["pairwise"] == {"wins": 0, "losses": 0, "ties": expected}
    run(scenario())


def normalize_q(text: str) -> str:
    return " ".join(text.split())


def test_pairwise_wins_and_losses_from_both_sides():
    async def scenario():
        scorer = FakeScorer()
        async with judge(config(), scorer) as (client, service):
            samples = []
            for i, (p, c) in enumerate([(0.2, 0.9), (0.3, 0.8), (0.9, 0.1), (0.5, 0.5), (0.1, 0.7)]):
                samples += [s("primary", f"q{i}", f"{p} primary", ts=i), s("canary", f"q{i}", f"{c} canary", ts=i)]
            samples.append(s("canary", "q-out", "0.9 c", ts=3610))
            samples.append(s("primary", "q-out", "0.1 p", ts=3550))  # 60 s apart: paired; counted by the canary's time: out
            await post(client, {"samples": samples})
            await service.wait_idle()
            assert all(a.endswith("primary") and b.endswith("canary") for _, a, b in scorer.compared[:5])
            assert (await verdict(client))["pairwise"] == {"wins": 3, "losses": 1, "ties": 1}
            assert (await verdict(client, variant="primary"))["pairwise"] == {"wins": 1, "losses": 3, "ties": 1}
            tokens = (await verdict(client))["budget"]["tokensUsed"]
            assert tokens == 12 * 10 + 6 * 1, "scores and comparisons both count"
    run(scenario())


def test_token_budget_exhaustion_skips_the_rest():
    async def scenario():
        scorer = FakeScorer(tokens=10)
        async with judge(config(token_budget=25, concurrency=1), scorer) as (client, service):
            await post(client, {"samples": [s(request=f"q{i}", ts=i) for i in range(5)]})
            await service.wait_idle()
            v = await verdict(client)
            assert (v["sampled"], v["judged"], v["skippedBudget"], v["pending"]) == (5, 3, 2, 0)
            assert v["budget"] == {"tokensUsed": 30, "tokenBudget": 25, "exhausted": True, "exhaustedBy": "release",
                                   "globalTokensUsed24h": None, "globalTokenBudget": None}
            # later samples of the exhausted release are skipped at ingest; other releases go on
            await post(client, {"samples": [s(request="late", ts=10), {**s(request="x", ts=10), "release": "prod/other"}]})
            await service.wait_idle()
            v = await verdict(client)
            assert (v["sampled"], v["judged"], v["skippedBudget"]) == (6, 3, 3)
            other = await verdict(client, release="prod/other")
            assert other["judged"] == 1 and other["budget"] == {
                "tokensUsed": 10, "tokenBudget": 25, "exhausted": False, "exhaustedBy": None,
                "globalTokensUsed24h": None, "globalTokenBudget": None}
            metrics = parse_metrics(await (await client.get("/metrics")).text())
            assert metric(metrics, "canarist_judge_samples_judged_total", release=R, variant="canary",
                          outcome="skipped_budget") == 3
            assert metric(metrics, "canarist_judge_samples_judged_total", release=R, variant="canary",
                          outcome="scored") == 3
    run(scenario())


def test_the_global_token_budget_stops_every_release_for_the_rest_of_the_day():
    async def scenario():
        scorer = FakeScorer(tokens=10)
        other = "prod/other"
        async with judge(config(global_token_budget=35, token_budget=1000, concurrency=1), scorer) as (client, service):
            await post(client, {"samples": [s(request=f"q{i}", ts=0) for i in range(3)]})
            await service.wait_idle()
            await post(client, {"samples": [{**s(request=f"o{i}", ts=60), "release": other} for i in range(2)]})
            await service.wait_idle()
            mine, theirs = await verdict(client), await verdict(client, release=other)
            assert (mine["judged"], theirs["judged"], theirs["skippedBudget"]) == (3, 1, 1)
            assert theirs["budget"] == {"tokensUsed": 10, "tokenBudget": 1000, "exhausted": True,
                                        "exhaustedBy": "global", "globalTokensUsed24h": 40, "globalTokenBudget": 35}
            assert mine["budget"]["exhaustedBy"] == "global"
            # A day later the spend has aged out: judging goes on.
            await post(client, s(request="tomorrow", ts=25 * 3600 + 60))
            await service.wait_idle()
            later = await verdict(client, since=at(25 * 3600), until=at(26 * 3600))
            assert later["judged"] == 1 and later["budget"]["exhaustedBy"] is None
            assert later["budget"]["globalTokensUsed24h"] == 10
            assert len(scorer.scored) == 5
    run(scenario())


def test_the_judges_clock_places_samples_in_windows_never_the_clients():
    """A client's timestamp is data: it can move no sample into a step's window, nor out of it."""
    async def scenario():
        async with judge(config(), FakeScorer()) as (client, service):
            await post(client, {"samples": [
                # received inside the window, claiming to be from the day before / an hour later
                s(request="a", response="0.9 a", ts=10, timestamp="2026-11-26T10:00:00Z"),
                s(request="b", response="0.7 b", ts=10, timestamp=at(7200)),
            ]})
            # received before the window and after it, claiming to be inside it
            await post(client, s(request="c", response="0.1 c", ts=-60, timestamp=at(30)))
            await post(client, s(request="d", response="0.1 d", ts=3600, timestamp=at(30)))
            await service.wait_idle()
            v = await verdict(client)
            assert (v["ingested"], v["judged"], v["meanScore"]) == (2, 2, pytest.approx(0.8))
            late = await verdict(client, since=at(3600), until=at(3601))
            assert late["ingested"] == 1
    run(scenario())


def test_scorer_failures_are_counted_as_errors():
    async def scenario():
        async with judge(config(), FakeScorer()) as (client, service):
            await post(client, {"samples": [s(request="a", response="boom"), s(request="b", response="0.4 x")]})
            await service.wait_idle()
            v = await verdict(client)
            assert (v["judged"], v["errors"], v["failed"], v["meanScore"]) == (1, 1, 1, 0.4)
    run(scenario())


BAD_SAMPLES = [
    ({"variant": "canary", "request": "q", "response": "a"}, "release: is required"),
    ({**s(ts=None), "release": "no-slash"}, "release: must be the CanaryRelease as 'namespace/name'"),
    ({**s(ts=None), "release": "Prod/Bot"}, "release: must be"),
    ({**s(ts=None), "variant": "stable"}, "variant: must be 'primary' or 'canary'"),
    ({**s(ts=None), "request": 42}, "request: must be a string"),
    ({**s(ts=None), "response": None}, "response: is required"),
    ({**s(ts=None), "response": "x" * (64 * 1024 + 1)}, "response: is 65537 bytes of UTF-8, at most 65536"),
    ({**s(ts=None), "request": "é" * (32 * 1024 + 1)}, "request: is 65538 bytes"),
    ({**s(ts=None), "reponse": "typo"}, "reponse: unknown field"),
    ({**s(ts=None), "timestamp": "yesterday"}, "timestamp: must be an RFC 3339 timestamp"),
    ({**s(ts=None), "mirrored": "yes"}, "mirrored: must be true or false"),
    ({**s(ts=None), "mirrored": 1}, "mirrored: must be true or false"),
    ({**s(ts=None), "timestamp": "2026-11-27T10:00:00"}, "timestamp: must be an RFC 3339 timestamp with a time zone"),
    ({**s(ts=None), "timestamp": "2026-13-27T10:00:00Z"}, "timestamp: not a valid date"),
    ({**s(ts=None), "segment": "x" * 1025}, "segment: is 1025 characters long, at most 1024"),
    ({**s(ts=None), "revision": 7}, "revision: must be a string"),
    ({**s(ts=None), "request": "\ud800"}, "request: is not valid Unicode"),
    ([s(ts=None)], "body: must be a sample object"),
    ({"samples": s(ts=None)}, "samples: must be a list"),
    ({"samples": [s(ts=None), {**s(ts=None), "variant": "x"}]}, "samples[1].variant: must be 'primary' or 'canary'"),
    ({"samples": [s(ts=None)] * 1001}, "samples: holds 1001 samples, at most 1000"),
    ({"samples": [s(ts=None)], "release": R}, "release: unknown field next to 'samples'"),
]


@pytest.mark.parametrize("body, message", BAD_SAMPLES, ids=[m.split(":")[0] for _, m in BAD_SAMPLES])
def test_bad_samples_answer_400_naming_the_field_and_store_nothing(body, message):
    async def scenario():
        async with judge(config(), FakeScorer()) as (client, _):
            resp = await client.post("/v1/samples", data=json.dumps(body), headers={"Content-Type": "application/json"})
            assert resp.status == 400
            assert (await resp.json())["error"].startswith(message)
            assert (await verdict(client, since="1970-01-01T00:00:00Z", until="2100-01-01T00:00:00Z"))["ingested"] == 0
    run(scenario())


def test_unparseable_and_oversized_bodies():
    async def scenario():
        async with judge(config(max_body_bytes=4096), FakeScorer()) as (client, _):
            resp = await client.post("/v1/samples", data=b"{not json")
            assert resp.status == 400 and (await resp.json())["error"].startswith("body: not valid JSON")
            resp = await client.post("/v1/samples", data=b"\xff\xfe")
            assert resp.status == 400 and (await resp.json())["error"].startswith("body: not valid JSON")
            resp = await client.post("/v1/samples", json=s(response="x" * 5000))
            assert resp.status == 413 and (await resp.json())["error"].startswith("body: larger than 4096 bytes")
    run(scenario())


@pytest.mark.parametrize("query, message", [
    ({"variant": "canary", "since": T0}, "release: query parameter is required"),
    ({"release": R, "since": T0}, "variant: query parameter is required"),
    ({"release": R, "variant": "canary"}, "since: query parameter is required"),
    ({"release": R, "variant": "both", "since": T0}, "variant: must be 'primary' or 'canary'"),
    ({"release": R, "variant": "canary", "since": "10:00"}, "since: must be an RFC 3339"),
    ({"release": R, "variant": "canary", "since": T0, "until": "2026-11-27T09:00:00Z"}, "until: "),
    ({"release": R, "variant": "canary", "since": T0, "window": "5m"}, "window: unknown query parameter"),
    ({"release": R, "variant": "canary", "since": T0, "revision": ""}, "revision: is empty"),
])
def test_bad_verdict_queries_answer_400_naming_the_parameter(query, message):
    async def scenario():
        async with judge(config(), FakeScorer()) as (client, _):
            resp = await client.get("/v1/verdict", params=query)
            assert resp.status == 400
            assert (await resp.json())["error"].startswith(message)
            resp = await client.get(f"/v1/verdict?release={R}&variant=canary&since={T0}&since={T0}")
            assert (await resp.json())["error"].startswith("since: given more than once")
    run(scenario())


def test_offsets_in_query_strings_survive_an_unescaped_plus():
    async def scenario():
        async with judge(config(), FakeScorer()) as (client, service):
            await post(client, s(ts=0))
            await service.wait_idle()
            resp = await client.get(f"/v1/verdict?release={R}&variant=canary"
                                    "&since=2026-11-27T11:00:00+01:00&until=2026-11-27T10:00:01Z")
            v = await resp.json()
            assert resp.status == 200 and v["since"] == "2026-11-27T10:00:00Z" and v["judged"] == 1
    run(scenario())


def test_restart_with_the_same_database_resumes_pending_work(tmp_path):
    db = str(tmp_path / "judge.db")

    async def first():
        stuck = FakeScorer(gate=asyncio.Event())  # never opens: every call is in flight at shutdown
        async with judge(config(db=db), stuck) as (client, _):
            await post(client, {"samples": [s("primary", "q1", "0.4 p"), s("canary", "q1", "0.8 c"),
                                            s("canary", "q2", "0.6 c")]})
            for _ in range(1000):  # up to 10 s: how soon the workers start depends on the machine
                if stuck.in_flight == 2:
                    break
                await asyncio.sleep(0.01)
            v = await verdict(client)
            assert (v["pending"], v["judged"]) == (2, 0)

    async def second():
        scorer = FakeScorer()
        async with judge(config(db=db), scorer) as (client, service):
            await service.wait_idle()
            v = await verdict(client)
            assert (v["ingested"], v["pending"], v["judged"], v["meanScore"]) == (2, 0, 2, pytest.approx(0.7))
            assert v["pairwise"] == {"wins": 1, "losses": 0, "ties": 0}
            assert len(scorer.scored) == 3 and len(scorer.compared) == 1, "each piece of work done once"

    run(first())
    run(second())


def test_export_lines_are_the_failed_samples_with_the_other_answer():
    async def scenario():
        async with judge(config(pass_mark=0.5), FakeScorer()) as (client, service):
            await post(client, {"samples": [
                s("primary", "What is 2 + 2?", "0.9 4", ts=1),
                s("canary", " What is 2 +  2?", "0.1 5", ts=2, revision="new1", requestId="r1", traceId="t1",
                  segment="eu", timestamp="2026-11-27T09:59:00.5Z"),
                s("canary", "What is 3 + 3?", "0.8 6", ts=3),
                s("canary", "What is 4 + 4?", "0.3 9", ts=4, segment="", requestId=None),
                s("primary", "What is 4 + 4?", "0.2 7", ts=5),
            ]})
            await service.wait_idle()
            resp = await client.get("/v1/export", params={"release": R})
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in (await resp.text()).splitlines()]
            assert lines[0] == {
                "fingerprint": fingerprint("What is 2 + 2?"), "release": R, "variant": "canary",
                "revision": "new1", "request": " What is 2 +  2?", "response": "0.1 5", "otherResponse": "0.9 4",
                "score": 0.1, "reason": "graded 0.1 5", "requestId": "r1", "traceId": "t1", "segment": "eu",
                "timestamp": at(2), "clientTimestamp": "2026-11-27T09:59:00.500000Z", "mirrored": False,
                "signals": [],
            }
            assert [(x["variant"], x["response"], x["otherResponse"]) for x in lines[1:]] == \
                [("canary", "0.3 9", "0.2 7"), ("primary", "0.2 7", "0.3 9")]
            only = await client.get("/v1/export", params={"release": R, "variant": "primary", "since": at(5)})
            assert [json.loads(x)["response"] for x in (await only.text()).splitlines()] == ["0.2 7"]
            none = await client.get("/v1/export", params={"release": R, "until": at(2)})
            assert await none.text() == ""
            bad = await client.get("/v1/export", params={"variant": "canary"})
            assert bad.status == 400 and (await bad.json())["error"].startswith("release:")
    run(scenario())


def test_healthz_and_metrics_with_a_registry_per_app():
    async def scenario():
        async with judge(config(), FakeScorer()) as (one, service), judge(config(), FakeScorer()) as (two, _):
            health = await one.get("/healthz")
            assert health.status == 200 and await health.text() == "ok\n"
            await post(one, {"samples": [s("primary", "q", "0.3 p"), s("canary", "q", "0.95 c"),
                                         s("canary", "r", "0.55 c")]})
            await service.wait_idle()
            resp = await one.get("/metrics")
            assert resp.headers["Content-Type"].startswith("text/plain")
            m = parse_metrics(await resp.text())
            assert metric(m, "canarist_judge_samples_ingested_total", release=R, variant="canary") == 2
            assert metric(m, "canarist_judge_samples_sampled_total", release=R, variant="primary") == 1
            assert metric(m, "canarist_judge_samples_judged_total", release=R, variant="canary", outcome="scored") == 2
            assert metric(m, "canarist_judge_judge_latency_seconds_count", call="score") == 3
            assert metric(m, "canarist_judge_judge_latency_seconds_count", call="compare") == 1
            assert metric(m, "canarist_judge_score_bucket", release=R, variant="canary", le="0.6") == 1
            assert metric(m, "canarist_judge_score_count", release=R, variant="canary") == 2
            assert metric(m, "canarist_judge_tokens_total", release=R) == 31
            assert metric(m, "canarist_judge_pairs_total", release=R, outcome="canary") == 1
            assert metric(m, "canarist_judge_queue_depth") == 0
            other = parse_metrics(await (await two.get("/metrics")).text())
            assert metric(other, "canarist_judge_samples_ingested_total", release=R, variant="canary") == 0
    run(scenario())


def test_health_fails_when_the_database_is_gone():
    async def scenario():
        async with judge(config(), FakeScorer()) as (client, service):
            service.storage.close()
            resp = await client.get("/healthz")
            assert resp.status == 503 and await resp.text() == "database unreachable\n"
    run(scenario())


def test_cli_flags_and_their_aliases():
    from canarist.cli.main import build_parser

    parser = build_parser("canarist")
    chart_style = parser.parse_args(["judge", "serve", "--llm-model", "m", "--llm-api-key-env", "KEY_VAR",
                                     "--llm-base-url", "http://127.0.0.1:9/v1"])
    short = parser.parse_args(["judge", "serve", "--model", "m", "--api-key-env", "KEY_VAR",
                               "--llm-base-url", "http://127.0.0.1:9/v1"])
    assert JudgeConfig.from_sources(chart_style, {}) == JudgeConfig.from_sources(short, {})
    cfg = JudgeConfig.from_sources(chart_style, {})
    assert (cfg.model, cfg.api_key_env, cfg.llm_base_url) == ("m", "KEY_VAR", "http://127.0.0.1:9/v1")
    assert chart_style.func.__name__ == "run_serve"


def test_config_from_flags_env_and_defaults():
    from canarist.judge.config import ConfigError

    cfg = JudgeConfig.from_sources({"sample_rate": "0.25", "listen": None},
                                   {"CANARIST_JUDGE_SAMPLE_RATE": "0.5", "CANARIST_JUDGE_LISTEN": "127.0.0.1:0",
                                    "CANARIST_JUDGE_TOKEN_BUDGET": "1000", "CANARIST_JUDGE_MODEL": ""})
    assert (cfg.sample_rate, cfg.host, cfg.port, cfg.token_budget, cfg.model) == (0.25, "127.0.0.1", 0, 1000, None)
    assert JudgeConfig() == replace(JudgeConfig(), listen="127.0.0.1:8080")
    assert (JudgeConfig().sample_rate, JudgeConfig().pass_mark, JudgeConfig().concurrency,
            JudgeConfig().api_key_env) == (0.1, 0.5, 4, "OPENAI_API_KEY")
    with pytest.raises(ConfigError, match=r"^CANARIST_JUDGE_CONCURRENCY: must be within 1\.\."):
        JudgeConfig.from_sources({}, {"CANARIST_JUDGE_CONCURRENCY": "0"})
    with pytest.raises(ConfigError, match=r"^--llm-base-url: must be an http"):
        JudgeConfig.from_sources({"llm_base_url": "ftp://x"}, {})
    with pytest.raises(ConfigError, match=r"^--llm-model \(or CANARIST_JUDGE_MODEL\) is required"):
        JudgeConfig(llm_base_url="http://127.0.0.1:1/v1").require_llm()
    with pytest.raises(ConfigError, match=r"^pass_mark: must be <= 1"):
        JudgeConfig(pass_mark=1.5)
    assert JudgeConfig(listen="[::1]:9000").host == "::1"
    assert math.isclose(JudgeConfig.from_sources({"timeout": "2.5"}).timeout, 2.5)


def test_verdicts_per_segment_and_the_coverage_of_every_segment():
    async def scenario():
        async with judge(config(), FakeScorer()) as (client, service):
            await post(client, {"samples": [
                s(request=f"q{i}", response=f"{score} text", ts=i, segment=segment)
                for i, (score, segment) in enumerate(((0.9, None), (0.8, None), (0.2, "de"), (0.4, "de"), (0.9, "fr")))
            ]})
            await service.wait_idle()
            everything = await verdict(client)
            german = await verdict(client, segment="de")
            assert everything["judged"] == 5 and everything["segments"] == {"de": 2, "fr": 1}
            assert german["judged"] == 2 and german["meanScore"] == pytest.approx(0.3)
            assert german["segment"] == "de" and german["segments"] == {"de": 2, "fr": 1}
            assert (await verdict(client, segment="es"))["judged"] == 0
    run(scenario())
