"""Answer quality from the judge's ordered pairs (docs/judge-protocol.md, GET /v1/pairs)."""

from __future__ import annotations

from datetime import datetime

import requests

from canarist.api.compare import Comparison
from canarist.api.durations import parse_duration

from ..judge_http import get_json
from .base import CursorLost, Pairs, SourceContext, SourceError

PAGE = 2000  # pairs a request
PAGES = 5    # requests a check: a long backlog is caught up over a few checks, never skipped


class JudgePairs:
    def observe(self, gate: Comparison, context: SourceContext, state: dict) -> Pairs:
        cursor = state.get("cursor")
        try:
            return fetch_pairs(gate, context.http, context.release, context.rollout_started_at, cursor)
        except CursorLost:
            pairs = fetch_pairs(gate, context.http, context.release, context.rollout_started_at, None)
            return Pairs(pairs.values, pairs.cursor, restarted=True)


def pair_value(gate: Comparison, primary_score: float | None, canary_score: float | None,
               outcome: str | None) -> float | None:
    """How much worse the canary's answer was, in [0, 1]; None when the pair says nothing."""
    assert gate.judge is not None
    if gate.judge.max_score_drop is not None:
        if primary_score is None or canary_score is None:
            return None
        return (primary_score - canary_score + 1) / 2
    return {"loss": 1.0, "tie": 0.5, "win": 0.0}.get(outcome or "")


def fetch_pairs(gate: Comparison, session: requests.Session, release: str, since: datetime,
                cursor: str | None, page: int = PAGE, pages: int = PAGES) -> Pairs:
    """New judged pairs after `cursor`, in the judge's completion order."""
    assert gate.judge is not None
    values: list[float] = []
    for _ in range(pages):
        params = {"release": release, "since": since.isoformat().replace("+00:00", "Z"), "limit": str(page)}
        if cursor:
            params["after"] = cursor
        body = get_json(session, gate.judge.url, "/v1/pairs", params,
                        parse_duration(gate.judge.timeout).total_seconds(), SourceError,
                        {410: CursorLost("the judge's database was replaced; the quality comparison starts over")})
        if not isinstance(body, dict):
            raise SourceError("malformed pairs from the judge: not an object")
        try:
            values += [v for v in (pair_value(gate, _score(p.get("primaryScore")), _score(p.get("canaryScore")),
                                              p.get("outcome")) for p in body["pairs"]) if v is not None]
            next_cursor, more = body.get("cursor"), bool(body.get("more"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SourceError(f"malformed pairs from the judge: {type(exc).__name__}") from exc
        if next_cursor is not None and not isinstance(next_cursor, str):
            raise SourceError("malformed pairs from the judge: cursor is not a string")
        cursor = next_cursor or cursor
        if not more:
            break
    return Pairs(tuple(values), cursor)


def _score(value) -> float | None:
    if value is None:
        return None
    score = float(value)
    if not 0 <= score <= 1:
        raise ValueError(f"score {score} outside [0, 1]")
    return score
