"""How often the judge agrees with human labels, and how consistent it is, with a real model.

    hack/install-llm.sh   # once (or `make real-model`, which also runs the test)
    .venv/bin/python bench/judge_agreement.py [--items N] [--response-format json_object_schema]
    .venv/bin/python bench/judge_agreement.py --base-url URL --model NAME [--api-key-env VAR]

Each item of tests/data/judge_labelled.jsonl is a question with a good and a bad answer (its
`label` says what is wrong with the bad one). The judge's own code (LLMClient, LLMScorer, the
prompts and the strict verdict parsing) scores both answers and compares them in both orders.
Without `--base-url` the model is SmolLM2-135M-Instruct on llama.cpp's server
(canarist.devstack.llama_server), started and stopped here. Printed:

- parsed: verdicts that parsed strictly, of all asked for (an unparseable one is an error);
- score agreement: share of items whose good answer scores at least the pass mark and whose bad
  answer scores below it (what the judge's `failed` count relies on); score order: share whose
  good answer scores higher than the bad one;
- pairwise agreement: share of items where both orders prefer the good answer (the judge's
  comparison outcome "good wins");
- position consistency: share of comparisons whose verdict (good, bad or tie) is the same in both
  orders; "first shown wins": share of the verdicts that picked the answer shown first (A), the
  position bias asking in both orders cancels.

These are honest figures of one model, not thresholds: a 135M model is a protocol test, not a judge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from canarist.judge.llm import RESPONSE_FORMATS, LLMClient
from canarist.judge.prompts import build_compare_messages
from canarist.judge.scorer import LLMScorer
from canarist.judge.types import JudgeError
from canarist.judge.verdicts import COMPARISON_SCHEMA, parse_comparison

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "judge_labelled.jsonl"


@dataclass(frozen=True)
class Item:
    id: int
    question: str
    good: str
    bad: str
    label: str


@dataclass
class Outcome:
    """What the judge made of one item; None where its verdict did not parse."""

    item: Item
    good_score: float | None = None
    bad_score: float | None = None
    # The comparison's verdict in each order, as "good", "bad" or "tie": good shown first, then bad first.
    good_first: str | None = None
    bad_first: str | None = None
    tokens: list[int] = field(default_factory=list)  # one entry per call that answered
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    items: int
    calls: int
    parsed: int
    tokens: int
    seconds: float
    score_agreement: float
    score_order: float
    pairwise_agreement: float
    position_consistency: float
    first_shown_wins: float
    errors: tuple[str, ...]

    def lines(self) -> list[str]:
        def pct(x: float) -> str:
            return f"{100 * x:.0f} %"
        return [
            f"items: {self.items}; verdicts parsed: {self.parsed} of {self.calls}; tokens: {self.tokens}; "
            f"{self.seconds:.0f} s ({self.seconds / max(1, self.calls):.1f} s a call)",
            f"score agreement (good >= pass mark > bad): {pct(self.score_agreement)}",
            f"score order (good > bad): {pct(self.score_order)}",
            f"pairwise agreement (both orders prefer the good answer): {pct(self.pairwise_agreement)}",
            f"position consistency (same verdict in both orders): {pct(self.position_consistency)}",
            f"first shown wins (verdicts picking answer A): {pct(self.first_shown_wins)}",
        ] + [f"error: {e}" for e in self.errors]


def load_items(path: Path = DATA, limit: int | None = None) -> list[Item]:
    items = [Item(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return items[:limit] if limit else items


async def _compare_once(llm: LLMClient, question: str, first: str, second: str) -> tuple[str, int]:
    # The scorer's comparison asks both orders but reports only their combination; the position
    # consistency needs each order's own verdict, so this asks the way LLMScorer._ask does.
    content, tokens = await llm.chat(build_compare_messages(question, first, second),
                                     schema=COMPARISON_SCHEMA, schema_name="comparison_verdict")
    return parse_comparison(content).winner, tokens


async def judge_item(llm: LLMClient, item: Item) -> Outcome:
    """Score both answers, compare them in both orders. Calls run one after another: a local
    server answers one at a time anyway, and per-call timeouts then measure generation alone."""
    scorer = LLMScorer(llm)
    out = Outcome(item)

    async def attempt(what: str, call):
        try:
            return await call
        except JudgeError as exc:
            out.errors.append(f"item {item.id} {what}: {exc}")
            return None

    for name, answer in (("good_score", item.good), ("bad_score", item.bad)):
        scored = await attempt(name, scorer.score(item.question, answer))
        if scored is not None:
            setattr(out, name, scored.score)
            out.tokens.append(scored.tokens)
    asked = await attempt("compare, good first", _compare_once(llm, item.question, item.good, item.bad))
    if asked is not None:
        out.good_first = {"A": "good", "B": "bad", "tie": "tie"}[asked[0]]
        out.tokens.append(asked[1])
    asked = await attempt("compare, bad first", _compare_once(llm, item.question, item.bad, item.good))
    if asked is not None:
        out.bad_first = {"A": "bad", "B": "good", "tie": "tie"}[asked[0]]
        out.tokens.append(asked[1])
    return out


def summarise(outcomes: list[Outcome], pass_mark: float, seconds: float) -> Report:
    n = len(outcomes)
    both_orders = [o for o in outcomes if o.good_first is not None and o.bad_first is not None]
    verdicts = [v for o in outcomes for v in ((o.good_first, "good"), (o.bad_first, "bad")) if v[0] is not None]

    def share(hits: int, of: int) -> float:
        return hits / of if of else 0.0

    return Report(
        items=n,
        calls=4 * n,
        parsed=sum(len(o.tokens) for o in outcomes),
        tokens=sum(sum(o.tokens) for o in outcomes),
        seconds=seconds,
        # Unparsed verdicts count as disagreement: the share is of all items.
        score_agreement=share(sum(1 for o in outcomes if o.good_score is not None and o.bad_score is not None
                                  and o.good_score >= pass_mark > o.bad_score), n),
        score_order=share(sum(1 for o in outcomes if o.good_score is not None and o.bad_score is not None
                              and o.good_score > o.bad_score), n),
        pairwise_agreement=share(sum(1 for o in both_orders if o.good_first == o.bad_first == "good"), n),
        position_consistency=share(sum(1 for o in both_orders if o.good_first == o.bad_first), len(both_orders)),
        # The answer shown first is the good one in the first order and the bad one in the second.
        first_shown_wins=share(sum(1 for winner, first in verdicts if winner == first), len(verdicts)),
        errors=tuple(e for o in outcomes for e in o.errors),
    )


async def evaluate(llm: LLMClient, items: list[Item], pass_mark: float = 0.5,
                   progress=None) -> tuple[Report, list[Outcome]]:
    started = time.monotonic()
    outcomes = []
    for item in items:
        outcomes.append(await judge_item(llm, item))
        if progress is not None:
            progress(outcomes[-1])
    return summarise(outcomes, pass_mark, time.monotonic() - started), outcomes


def _show(o: Outcome) -> None:
    print(f"  item {o.item.id:>2} ({o.item.label}): good {o.good_score}, bad {o.bad_score}; "
          f"good first -> {o.good_first}, bad first -> {o.bad_first}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, help="only the first N items (a quick run)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--pass-mark", type=float, default=0.5)
    parser.add_argument("--response-format", choices=RESPONSE_FORMATS, default="json_object_schema",
                        help="json_object_schema is what llama-cpp-python's server constrains to")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per LLM call")
    parser.add_argument("--base-url", help="another OpenAI-compatible server instead of the local llama.cpp one")
    parser.add_argument("--model", help="model name for --base-url")
    parser.add_argument("--api-key-env", help="environment variable holding the API key for --base-url")
    args = parser.parse_args(argv)
    items = load_items(args.data, args.items)

    async def run(base_url: str, model: str, api_key: str | None) -> Report:
        async with LLMClient(base_url, model, api_key, timeout=args.timeout, retries=1,
                             response_format=args.response_format) as llm:
            return (await evaluate(llm, items, args.pass_mark, _show))[0]

    if args.base_url:
        if not args.model:
            parser.error("--base-url needs --model")
        key = os.environ.get(args.api_key_env) if args.api_key_env else None
        report, model = asyncio.run(run(args.base_url, args.model, key)), args.model
    else:
        from canarist.devstack.llama_server import LlamaServer

        try:
            server = LlamaServer.start()
        except FileNotFoundError as exc:
            parser.exit(1, f"{exc}\n")
        with server:
            report = asyncio.run(run(server.base_url, server.model, None))
            model = f"{server.model} on llama.cpp ({server.model_path.name})"
    print(f"judge agreement: {model}, response_format {args.response_format}, pass mark {args.pass_mark:g}")
    for line in report.lines():
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
