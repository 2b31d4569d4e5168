"""The judge's `response_format` option and the verdicts' JSON Schemas (on the wire: test_judge_scorer.py)."""

from __future__ import annotations

import json

import pytest

from canarist.judge.config import ConfigError, JudgeConfig
from canarist.judge.llm import DEFAULT_RESPONSE_FORMAT, RESPONSE_FORMATS, LLMClient
from canarist.judge.verdicts import COMPARISON_SCHEMA, SCORE_SCHEMA, parse_comparison, parse_score


# -- the option -----------------------------------------------------------------------------------

def test_default_is_json_mode_everywhere():
    assert DEFAULT_RESPONSE_FORMAT == "json_object"
    assert LLMClient("http://127.0.0.1:1", "m", None).response_format == "json_object"
    assert JudgeConfig().response_format == "json_object"


def test_unknown_formats_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="json_schema"):
        LLMClient("http://127.0.0.1:1", "m", None, response_format="grammar")
    with pytest.raises(ConfigError, match="CANARIST_JUDGE_RESPONSE_FORMAT.*json_object_schema"):
        JudgeConfig.from_sources(env={"CANARIST_JUDGE_RESPONSE_FORMAT": "xml"})


def test_config_reads_flag_then_environment():
    assert JudgeConfig.from_sources(env={"CANARIST_JUDGE_RESPONSE_FORMAT": " JSON_SCHEMA "}).response_format == "json_schema"
    flags = {"response_format": "none"}
    env = {"CANARIST_JUDGE_RESPONSE_FORMAT": "json_schema"}
    assert JudgeConfig.from_sources(flags, env).response_format == "none"
    assert set(RESPONSE_FORMATS) == {"none", "json_object", "json_schema", "json_object_schema"}
    for value in RESPONSE_FORMATS:
        assert JudgeConfig(response_format=value).response_format == value


def test_the_field_each_format_sends():
    def field(fmt, schema=SCORE_SCHEMA):
        return LLMClient("http://127.0.0.1:1", "m", None, response_format=fmt).response_format_for(schema, "score_verdict")

    assert field("none") is None
    assert field("json_object") == {"type": "json_object"}
    assert field("json_schema") == {"type": "json_schema",
                                    "json_schema": {"name": "score_verdict", "strict": True, "schema": SCORE_SCHEMA}}
    assert field("json_object_schema") == {"type": "json_object", "schema": SCORE_SCHEMA}
    # A call that expects no particular object still gets JSON mode from the schema formats.
    assert field("json_schema", None) == field("json_object_schema", None) == {"type": "json_object"}


def test_the_schemas_describe_exactly_what_the_parsers_accept():
    assert set(SCORE_SCHEMA["required"]) == set(SCORE_SCHEMA["properties"]) == {"score", "reason"}
    assert set(COMPARISON_SCHEMA["required"]) == set(COMPARISON_SCHEMA["properties"]) == {"winner", "reason"}
    assert SCORE_SCHEMA["additionalProperties"] is False and COMPARISON_SCHEMA["additionalProperties"] is False
    for winner in COMPARISON_SCHEMA["properties"]["winner"]["enum"]:
        assert parse_comparison(f'{{"winner": "{winner}", "reason": "r"}}').winner == winner
    levels = SCORE_SCHEMA["properties"]["score"]["enum"]
    assert levels[0] == 0 and levels[-1] == 1 and levels == sorted(levels)
    for value in levels:
        assert parse_score(json.dumps({"score": value, "reason": "r"})).score == value


def test_the_service_builds_its_client_with_the_configured_format(monkeypatch):
    """`--llm-response-format` reaches the client the judge service scores with."""
    import asyncio

    from canarist.judge.config import JudgeConfig
    from canarist.judge.service import build_scorer

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for chosen in ("none", "json_object", "json_schema", "json_object_schema"):
        scorer = build_scorer(JudgeConfig(llm_base_url="http://127.0.0.1:9/v1", model="m", response_format=chosen))
        assert scorer.llm.response_format == chosen
        asyncio.run(scorer.close())
