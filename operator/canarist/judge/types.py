"""The contract between the judge service and its scorer (the part that talks to the LLM)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


class JudgeError(Exception):
    """Scoring failed for good (after retries): LLM unreachable, timed out, or an unparseable verdict."""


@dataclass(frozen=True)
class Score:
    score: float  # in [0, 1]
    reason: str
    tokens: int   # prompt + completion tokens spent, for the budget
    # Signs that the answer addresses its grader (prompts.injection_signals): evidence kept with
    # the score and shown in exports, never a verdict of their own.
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class Comparison:
    """A pairwise comparison already run in both orders: "a" or "b" only if both orders agree."""

    winner: Literal["a", "b", "tie"]
    reason: str
    tokens: int


class Scorer(Protocol):
    async def score(self, request: str, response: str) -> Score: ...

    async def compare(self, request: str, answer_a: str, answer_b: str) -> Comparison: ...

    async def close(self) -> None: ...
