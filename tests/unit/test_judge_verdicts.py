"""Verdicts are parsed strictly: exactly the expected JSON object, or JudgeError (never a score)."""

from __future__ import annotations

import pytest

from canarist.judge.types import JudgeError
from canarist.judge.verdicts import ComparisonVerdict, ScoreVerdict, parse_comparison, parse_score


@pytest.mark.parametrize("text, expected", [
    ('{"score": 0.8, "reason": "mostly right"}', ScoreVerdict(0.8, "mostly right")),
    ('{"reason": "order does not matter", "score": 0.25}', ScoreVerdict(0.25, "order does not matter")),
    ('{"score": 1, "reason": "int is a number"}', ScoreVerdict(1.0, "int is a number")),
    ('{"score": 0, "reason": ""}', ScoreVerdict(0.0, "")),
    ('  \n{"score": 0.5, "reason": "white space around"}\n ', ScoreVerdict(0.5, "white space around")),
    ('```json\n{"score": 0.9, "reason": "fenced"}\n```', ScoreVerdict(0.9, "fenced")),
    ('```\n{"score": 0.9, "reason": "bare fence"}\n```', ScoreVerdict(0.9, "bare fence")),
    ('```JSON\n{"score": 0.9, "reason": "upper"}```', ScoreVerdict(0.9, "upper")),
    ('{"score": 0.9, "reason": "multi\\nline   reason\\u200b"}', ScoreVerdict(0.9, "multi line reason")),
    # A raw line break or tab inside a string (invalid JSON, let through by llama-cpp-python's
    # schema grammar) only ever reaches the reason, which is cleaned.
    ('{"score": 0, "reason":"raw\nline\tbreak\x01"}', ScoreVerdict(0.0, "raw line break")),
])
def test_valid_score_verdicts(text, expected):
    verdict = parse_score(text)
    assert verdict == expected
    assert isinstance(verdict.score, float)


@pytest.mark.parametrize("text", [
    "",
    "0.8",
    "The answer is correct. Score: 0.9",
    'Sure! {"score": 0.8, "reason": "x"}',                       # prose before
    '{"score": 0.8, "reason": "x"} Hope this helps!',            # prose after
    '{"score": 0.8, "reason": "x"}\n{"score": 0.1, "reason": "y"}',  # two objects
    '[{"score": 0.8, "reason": "x"}]',
    '```json\n{"score": 0.8, "reason": "x"}\n```\nmore text',
    'Here it is:\n```json\n{"score": 0.8, "reason": "x"}\n```',
    '```python\n{"score": 0.8, "reason": "x"}\n```',
    '{"score": 0.8}',                                             # missing reason
    '{"reason": "x"}',                                            # missing score
    '{"score": 0.8, "reason": "x", "confidence": 0.9}',           # extra key
    '{"score": 0.8, "reason": "x", "score": 1.0}',                # duplicate key
    '{"score": "0.8", "reason": "x"}',                            # string score
    '{"score": true, "reason": "x"}',
    '{"score": null, "reason": "x"}',
    '{"score": 1.2, "reason": "x"}',
    '{"score": -0.1, "reason": "x"}',
    '{"score": NaN, "reason": "x"}',
    '{"score": Infinity, "reason": "x"}',
    '{"score": 8, "reason": "out of 10"}',
    '{"score": 0.8, "reason": 5}',
    '{"score": 0.8, "reason": null}',
    "{'score': 0.8, 'reason': 'single quotes'}",
    '{"score": 0.8, "reason": "x",}',
    '{"winner": "A", "reason": "wrong kind"}',
])
def test_invalid_score_verdicts_raise_judge_error(text):
    with pytest.raises(JudgeError, match="unparseable score verdict"):
        parse_score(text)


def test_non_text_and_huge_outputs_raise_judge_error():
    with pytest.raises(JudgeError):
        parse_score(None)  # type: ignore[arg-type]
    with pytest.raises(JudgeError, match="more than a verdict"):
        parse_score('{"score": 0.5, "reason": "' + "x" * 30_000 + '"}')


def test_long_reason_is_truncated():
    verdict = parse_score('{"score": 0.5, "reason": "' + "word " * 200 + '"}')
    assert len(verdict.reason) <= 300 and verdict.reason.endswith("…")


@pytest.mark.parametrize("text, expected", [
    ('{"winner": "A", "reason": "a is right"}', ComparisonVerdict("A", "a is right")),
    ('{"winner": "B", "reason": "b is right"}', ComparisonVerdict("B", "b is right")),
    ('{"reason": "same", "winner": "tie"}', ComparisonVerdict("tie", "same")),
    ('```json\n{"winner": "tie", "reason": "fenced"}\n```', ComparisonVerdict("tie", "fenced")),
])
def test_valid_comparison_verdicts(text, expected):
    assert parse_comparison(text) == expected


@pytest.mark.parametrize("text", [
    "A",
    'A is better: {"winner": "A", "reason": "x"}',
    '{"winner": "a", "reason": "x"}',
    '{"winner": "Tie", "reason": "x"}',
    '{"winner": "both", "reason": "x"}',
    '{"winner": "A"}',
    '{"winner": 1, "reason": "x"}',
    '{"winner": ["A"], "reason": "x"}',
    '{"winner": "A", "reason": "x", "score": 1}',
    '{"score": 0.9, "reason": "wrong kind"}',
])
def test_invalid_comparison_verdicts_raise_judge_error(text):
    with pytest.raises(JudgeError, match="unparseable comparison verdict"):
        parse_comparison(text)


def test_a_raw_control_character_never_makes_a_key_or_a_value():
    with pytest.raises(JudgeError, match="keys"):
        parse_score('{"score\n": 0.5, "reason": "r"}')
    with pytest.raises(JudgeError, match="winner"):
        parse_comparison('{"winner": "A\n", "reason": "r"}')
