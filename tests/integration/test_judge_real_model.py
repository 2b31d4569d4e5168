"""The judge against a real model: SmolLM2-135M-Instruct on llama.cpp's OpenAI-compatible server.

No stand-ins: the judge's own LLMClient, LLMScorer, prompts and strict verdict parsing, over HTTP
on 127.0.0.1, to `python -m llama_cpp.server` from the venv hack/install-llm.sh builds
(canarist.devstack.llama_server). It proves the wire protocol (chat completions, `usage` counted,
a schema-constrained `response_format` that makes verdicts parse), timeouts and retries, and
prints the agreement and position consistency this tiny model reaches on
tests/data/judge_labelled.jsonl; those figures are printed, never asserted.

Skipped when the server is not installed, unless asked for: `make real-model` (or
CANARIST_REAL_MODEL=1) makes a missing install a failure. `make test` runs the protocol tests;
the agreement test runs only when asked for (`make real-model`): it makes 48-96 calls of 4-7 s
(8-11 minutes, which pushed a cold `make test` to about 75 of CI's 90 minutes), and whether this
tiny model's every verdict parses is the model's luck as much as the judge's code (CI once failed
on a raw line break in a reason, now read). CANARIST_REAL_MODEL_ITEMS (default 12; 0 = all 24)
sets how many items it judges; `make real-model` and bench/judge_agreement.py judge all of them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from canarist.devstack.llama_server import LlamaServer, installed, llm_venv
from canarist.judge.llm import LLMClient
from canarist.judge.llm import _tokens as estimated_tokens  # what it counts without usage
from canarist.judge.prompts import build_compare_messages, build_score_messages
from canarist.judge.scorer import LLMScorer
from canarist.judge.types import JudgeError
from canarist.judge.verdicts import SCORE_SCHEMA, parse_comparison, parse_score

ASKED = os.environ.get("CANARIST_REAL_MODEL") == "1"
DEFAULT_ITEMS = 12  # of the labelled set's 24: every kind of flaw (label) is among them
_BENCH = Path(__file__).resolve().parents[2] / "bench" / "judge_agreement.py"
QUESTION = "What is the capital of France?"
GOOD = "The capital of France is Paris."
BAD = "The capital of France is Berlin."
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

pytestmark = pytest.mark.skipif(
    not ASKED and not installed(),
    reason=f"no llama.cpp server in {llm_venv()}: run hack/install-llm.sh, or `make real-model` to install and run",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not installed():
        pytest.fail(f"CANARIST_REAL_MODEL=1 but the llama.cpp server is not installed in {llm_venv()}: "
                    "hack/install-llm.sh failed or was not run")
    with LlamaServer.start(workdir=tmp_path_factory.mktemp("llama") / "server") as running:
        yield running


def run(coro):
    return asyncio.run(coro)


async def with_client(server: LlamaServer, fn, **options):
    options.setdefault("response_format", "json_object_schema")
    async with LLMClient(server.base_url, server.model, None, **options) as client:
        return await fn(client)


def post(server: LlamaServer, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(server.base_url + "/chat/completions", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with _OPENER.open(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


# -- the wire protocol ---------------------------------------------------------------------------

def test_chat_completion_with_usage_and_a_schema_constrained_verdict(server):
    client = LLMClient(server.base_url, server.model, None, response_format="json_object_schema")
    payload = {"model": server.model, "messages": build_score_messages(QUESTION, GOOD), "temperature": 0,
               "max_tokens": 300, "response_format": client.response_format_for(SCORE_SCHEMA, "score_verdict")}
    status, answer = post(server, payload)
    assert status == 200, answer
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 100 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    content = answer["choices"][0]["message"]["content"]
    verdict = parse_score(content)  # strictly: exactly {"score", "reason"}, score in [0, 1]
    print(f"\nraw verdict: {content!r} -> {verdict}")

    # The judge's client sends the same prompt and counts the server's usage, not its estimate:
    # the same prompt's tokens plus a completion within max_tokens. (Not the same answer: even at
    # temperature 0, the server's prompt cache changes the numerics enough to flip a verdict.)
    messages = payload["messages"]
    content_2, tokens = run(with_client(server, lambda c: c.chat(messages, schema=SCORE_SCHEMA,
                                                                 schema_name="score_verdict")))
    parse_score(content_2)
    assert usage["prompt_tokens"] < tokens <= usage["prompt_tokens"] + 300
    assert tokens != estimated_tokens(None, messages, content_2)


def test_the_scorer_scores_and_compares_through_the_real_server(server):
    async def both(client):
        scorer = LLMScorer(client)
        return await scorer.score(QUESTION, BAD), await scorer.compare(QUESTION, GOOD, BAD)

    score, comparison = run(with_client(server, both))
    assert 0.0 <= score.score <= 1.0 and score.tokens > 100
    assert comparison.winner in ("a", "b", "tie") and comparison.tokens > 200  # two calls' tokens
    print(f"\nscore of a wrong answer: {score}\ncomparison (a right, b wrong): {comparison}")


def test_json_mode_alone_does_not_make_this_model_follow_the_verdict_shape(server):
    # The reason for the schema formats: with {"type": "json_object"} only some JSON object is
    # promised. Printed, not asserted: what a small model does unconstrained is its business.
    async def ask(client):
        shapes = []
        for messages, parse in ((build_score_messages(QUESTION, GOOD), parse_score),
                                (build_compare_messages(QUESTION, GOOD, BAD), parse_comparison)):
            content, _ = await client.chat(messages)
            try:
                parse(content)
                shapes.append(("parsed", content))
            except JudgeError as exc:
                shapes.append(("unparseable", f"{content[:120]!r}: {exc}"[:300]))
        return shapes

    shapes = run(with_client(server, ask, response_format="json_object"))
    print("\nJSON mode alone:\n" + "\n".join(f"  {kind}: {text}" for kind, text in shapes))


def test_openai_json_schema_format_is_refused_by_this_server(server, caplog):
    # llama-cpp-python's request model knows only "text" and "json_object", so the judge must be
    # set to json_object_schema for it. Its refusal comes as HTTP 500 (it answers every request
    # error so), which the client retries like any 5xx before failing with the server's words.
    caplog.set_level(logging.WARNING, logger="canarist.judge.llm")
    with pytest.raises(JudgeError, match=r"after 2 attempt\(s\); last: HTTP 500: .*response_format"):
        run(with_client(server, lambda c: LLMScorer(c).score(QUESTION, GOOD), response_format="json_schema",
                        retries=1, backoff=0.01))
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 1


# -- timeouts and retries -----------------------------------------------------------------------

def test_a_timeout_shorter_than_a_generation_fails_after_every_retry(server, caplog):
    caplog.set_level(logging.WARNING, logger="canarist.judge.llm")
    started = time.monotonic()
    with pytest.raises(JudgeError, match=r"failed after 3 attempt\(s\); last: no answer within 0.05s"):
        run(with_client(server, lambda c: LLMScorer(c).score(QUESTION, GOOD), timeout=0.05, retries=2,
                        backoff=0.01))
    elapsed = time.monotonic() - started
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retried) == 2, retried  # attempts 1 and 2 retried, attempt 3 raised
    assert "attempt 1 of 3" in retried[0] and "attempt 2 of 3" in retried[1]
    assert elapsed >= 3 * 0.05
    print(f"\n3 attempts of 0.05 s timed out in {elapsed:.2f} s")


def test_a_normal_timeout_succeeds_even_behind_abandoned_generations(server):
    # The server may still be generating the answers the previous test gave up on: a timeout
    # sized for a generation or a few still gets its verdict, on the first attempt or a retry.
    started = time.monotonic()
    scored = run(with_client(server, lambda c: LLMScorer(c).score(QUESTION, GOOD), timeout=120, retries=1))
    assert 0.0 <= scored.score <= 1.0 and scored.tokens > 0
    print(f"\nscored in {time.monotonic() - started:.1f} s: {scored}")


# -- agreement on the labelled set -----------------------------------------------------------------

@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("judge_agreement", _BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["judge_agreement"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# Four calls an item, 4-7 s each on 2 cores: all 24 items (`make real-model`) take 7-11 minutes.
@pytest.mark.timeout(1800)
def test_agreement_and_position_consistency_on_the_labelled_set(server, bench):
    if not ASKED:
        pytest.skip("the agreement figures take 8-11 minutes: `make real-model` runs them")
    limit = int(os.environ.get("CANARIST_REAL_MODEL_ITEMS") or DEFAULT_ITEMS) or None
    items = bench.load_items(limit=limit)
    assert len(items) == limit if limit else len(items) >= 20
    report, outcomes = run(with_client(server, lambda c: bench.evaluate(c, items), timeout=120, retries=1))
    print(f"\njudge agreement, {server.model}, json_object_schema, pass mark 0.5:")
    for line in report.lines():
        print("  " + line)
    # The protocol, not the model's quality: every verdict parsed strictly, every call's tokens counted.
    assert report.errors == () and report.parsed == report.calls == 4 * len(items)
    assert all(len(o.tokens) == 4 and all(t > 0 for t in o.tokens) for o in outcomes)
    assert 0.0 <= report.score_agreement <= 1.0 and 0.0 <= report.position_consistency <= 1.0
