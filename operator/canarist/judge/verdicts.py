"""Strict parsing of the judge model's verdicts.

The model must answer with one JSON object and nothing else; a ```json fence around it (the one
habit most chat models have) is tolerated, and so is a raw line break inside a string (which only the
reason can hold), any other text is not. Anything that is not exactly the
expected object raises JudgeError: the service counts it as an error, never as a score.

    score:      {"score": <number in [0, 1]>, "reason": "<string>"}
    comparison: {"winner": "A" | "B" | "tie", "reason": "<string>"}

`SCORE_SCHEMA` and `COMPARISON_SCHEMA` are the same shapes as JSON Schemas, for servers that
constrain their output to a schema (the judge's `response_format` option): a constrained model
cannot help producing parseable JSON, yet its verdict is still parsed just as strictly here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from .prompts import MAX_REASON_CHARS, strip_invisible
from .types import JudgeError

MAX_VERDICT_CHARS = 20_000
_FENCE = re.compile(r"\A```(?:json)?\s*(.*?)\s*```\Z", re.DOTALL | re.IGNORECASE)


# The verdicts as JSON Schemas, for constrained decoding (llama.cpp's grammars, vLLM, OpenAI's
# strict mode). A score is one of eleven levels: constrained decoders commonly ignore a number's
# "minimum" and "maximum" (llama-cpp-python's grammar does, and SmolLM2 then answers
# {"score": 67}), but every one of them honours an "enum". Parsing is unchanged by it: a number in
# [0, 1] from a server that was not constrained is still accepted, anything else still rejected.
SCORE_LEVELS: tuple[float, ...] = (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1)
SCORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "enum": list(SCORE_LEVELS)},
        "reason": {"type": "string"},
    },
    "required": ["score", "reason"],
    "additionalProperties": False,
}
COMPARISON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "winner": {"type": "string", "enum": ["A", "B", "tie"]},
        "reason": {"type": "string"},
    },
    "required": ["winner", "reason"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class ScoreVerdict:
    score: float
    reason: str


@dataclass(frozen=True)
class ComparisonVerdict:
    winner: Literal["A", "B", "tie"]
    reason: str


def _excerpt(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"duplicate keys {duplicated}")
    return dict(pairs)


def _load_object(text: str, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise JudgeError(f"{what}: expected the model's text, got {type(text).__name__}")
    if len(text) > MAX_VERDICT_CHARS:
        raise JudgeError(f"{what}: the model answered {len(text)} characters, more than a verdict")
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if not body.startswith("{"):
        raise JudgeError(f"{what}: expected a JSON object and nothing else, got {_excerpt(text)}")
    try:
        # strict=False admits raw control characters (a line break) inside a string, which JSON
        # forbids and grammar-constrained servers let through (llama-cpp-python's schema grammar
        # does): only the reason can hold one, and it is cleaned; keys and values stay exact.
        obj = json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant, strict=False)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise JudgeError(f"{what}: not a single valid JSON object ({exc}): {_excerpt(text)}") from None
    if not isinstance(obj, dict):
        raise JudgeError(f"{what}: expected a JSON object, got {_excerpt(text)}")
    if set(obj) != keys:
        missing, extra = sorted(keys - set(obj)), sorted(set(obj) - keys)
        raise JudgeError(f"{what}: expected exactly the keys {sorted(keys)}"
                         + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else ""))
    return obj


def _reason(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise JudgeError(f"{what}: \"reason\" must be a string, got {type(value).__name__}")
    reason = " ".join(strip_invisible(value).split())
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS - 1].rstrip() + "…"
    return reason


def parse_score(text: str) -> ScoreVerdict:
    """`{"score": number in [0, 1], "reason": string}`, or JudgeError."""
    what = "unparseable score verdict"
    obj = _load_object(text, {"score", "reason"}, what)
    score = obj["score"]
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise JudgeError(f"{what}: \"score\" must be a number, got {score!r}")
    score = float(score)
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise JudgeError(f"{what}: \"score\" must be within [0, 1], got {score!r}")
    return ScoreVerdict(score, _reason(obj["reason"], what))


def parse_comparison(text: str) -> ComparisonVerdict:
    """`{"winner": "A" | "B" | "tie", "reason": string}`, or JudgeError."""
    what = "unparseable comparison verdict"
    obj = _load_object(text, {"winner", "reason"}, what)
    winner = obj["winner"]
    if winner not in ("A", "B", "tie") or not isinstance(winner, str):
        raise JudgeError(f"{what}: \"winner\" must be \"A\", \"B\" or \"tie\", got {winner!r}")
    return ComparisonVerdict(winner, _reason(obj["reason"], what))
