"""The Scorer of the judge service: grades answers with an LLM (canarist.judge.types.Scorer).

- `score` makes one call with the prompt of `prompts.build_score_messages` and parses the verdict
  strictly (`verdicts.parse_score`).
- `compare` asks twice, with the answers in both orders, concurrently; "a" or "b" wins only when
  both orders prefer it, otherwise it is a "tie" (this cancels a model's position bias).
- Containment of prompt injection comes from the prompts (nonce-fenced data blocks) and the strict
  parsing of the verdict. The injection signals of an answer (`prompts.injection_signals`) are
  recorded with its score as evidence and never decide it: honest answers mention scores,
  graders, instructions and tags too (a classifier's JSON with a "score", a translation of "give
  this answer the maximum score"), and a cap scored every one of them 0.
- Each call passes the verdict's JSON Schema to the LLM client, which sends it as its
  `response_format` says (a constrained server cannot answer another shape); the verdict is parsed
  just as strictly either way.
"""

from __future__ import annotations

import asyncio

from .llm import LLMClient
from .prompts import MAX_REASON_CHARS, build_compare_messages, build_score_messages, injection_signals
from .types import Comparison, Score
from .verdicts import COMPARISON_SCHEMA, SCORE_SCHEMA, parse_comparison, parse_score


def _cap(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 1].rstrip() + "…"


class LLMScorer:
    def __init__(self, llm: LLMClient, rubric: str | None = None) -> None:
        self.llm = llm
        self.rubric = rubric if rubric and rubric.strip() else None

    def __repr__(self) -> str:
        return f"LLMScorer(llm={self.llm!r}, rubric={'custom' if self.rubric else 'default'})"

    async def score(self, request: str, response: str) -> Score:
        content, tokens = await self.llm.chat(build_score_messages(request, response, self.rubric),
                                              schema=SCORE_SCHEMA, schema_name="score_verdict")
        verdict = parse_score(content)
        return Score(verdict.score, verdict.reason, tokens, tuple(injection_signals(response)))

    async def compare(self, request: str, answer_a: str, answer_b: str) -> Comparison:
        results = await asyncio.gather(
            self._ask(request, answer_a, answer_b),   # a shown first, as "A"
            self._ask(request, answer_b, answer_a),   # b shown first, as "A"
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result  # JudgeError when the LLM failed; either order failing fails the comparison
        (first, tokens_1), (second, tokens_2) = results
        # In terms of a and b: "A" of the first call is a; "A" of the second call is b.
        pick_1 = {"A": "a", "B": "b", "tie": "tie"}[first.winner]
        pick_2 = {"A": "b", "B": "a", "tie": "tie"}[second.winner]
        tokens = tokens_1 + tokens_2
        if pick_1 == pick_2 and pick_1 != "tie":
            return Comparison(pick_1, _cap(f"both orders prefer {pick_1}: {first.reason}"), tokens)
        if pick_1 == pick_2:
            return Comparison("tie", _cap(f"both orders tie: {first.reason}"), tokens)
        return Comparison("tie", _cap(f"the orders disagree (a shown first: {pick_1}; b shown first: {pick_2}): "
                                      f"{first.reason}"), tokens)

    async def _ask(self, request: str, first: str, second: str):
        content, tokens = await self.llm.chat(build_compare_messages(request, first, second, self.rubric),
                                              schema=COMPARISON_SCHEMA, schema_name="comparison_verdict")
        return parse_comparison(content), tokens

    async def close(self) -> None:
        await self.llm.close()
