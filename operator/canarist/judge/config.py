"""`JudgeConfig`: how one judge service runs. From CLI flags, with CANARIST_JUDGE_* env fallbacks.

Precedence: a flag given on the command line, then its environment variable, then the default.
The API key itself is never part of the configuration (so it cannot end up in a log line): only
the name of the environment variable or the file that holds it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

__all__ = ["JudgeConfig", "ConfigError", "OPTIONS", "Option", "add_arguments", "parse_listen"]

ENV_PREFIX = "CANARIST_JUDGE_"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the setting and how to fix it."""


def parse_listen(value: str) -> tuple[str, int]:
    """"host:port" (IPv6 as "[::1]:8080") -> (host, port); port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be HOST:PORT such as 127.0.0.1:8080, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be a number within 0..65535, got {port!r}")
    return host, int(port)


def _float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number, got {value!r}") from None
        if isinstance(value, bool) or not math.isfinite(number):
            raise ValueError(f"must be a finite number, got {value!r}")
        if lo is not None and (number <= lo if lo_open else number < lo):
            raise ValueError(f"must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
        if hi is not None and number > hi:
            raise ValueError(f"must be <= {hi:g}, got {value!r}")
        return number
    return check


def _int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"must be a whole number, got {value!r}")
        try:
            number = int(value, 10) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a whole number, got {value!r}") from None
        if isinstance(value, float) and value != number:
            raise ValueError(f"must be a whole number, got {value!r}")
        if number < lo or (hi is not None and number > hi):
            raise ValueError(f"must be within {lo}..{hi if hi is not None else 'inf'}, got {value!r}")
        return number
    return check


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


def _listen(value: Any) -> str:
    parse_listen(_text(value))
    return value


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = _text(value).strip().lower()
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {value!r}")
        return text
    return check


def _names(value: Any) -> tuple[str, ...]:
    """A comma-separated list (flags, environment) or a sequence of names."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(item).strip() for item in items if str(item).strip())
    for name in names:
        if any(ch.isspace() for ch in name):
            raise ValueError(f"{name!r} holds white space; separate names with commas")
    return names


def _url(value: Any) -> str:
    parts = urlsplit(_text(value))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL such as http://127.0.0.1:8000/v1, got {value!r}")
    return value.rstrip("/")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: Any) -> float:
    """Seconds, as a number or a string such as "90", "36h" or "14d" (s, m, h, d)."""
    text = str(value).strip().lower() if isinstance(value, str) else value
    if isinstance(text, str) and text[-1:] in _UNITS:
        return _float(0.0)(text[:-1]) * _UNITS[text[-1]]
    return _float(0.0)(text)


def _env_name(value: Any) -> str:
    text = _text(value)
    if not text.replace("_", "").isalnum():
        raise ValueError(f"must be the name of an environment variable such as OPENAI_API_KEY, got {value!r}")
    return text


@dataclass(frozen=True)
class Option:
    field: str
    flag: str
    check: Callable[[Any], Any]  # parses a string (flag or env) or checks a value; raises ValueError
    help: str
    metavar: str
    aliases: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()


OPTIONS: tuple[Option, ...] = (
    Option("listen", "--listen", _listen, "address to serve HTTP on", "HOST:PORT"),
    Option("db", "--db", _text, "SQLite database file (':memory:' keeps nothing; one replica), or a "
           "postgresql://user@host:port/dbname URL (several replicas share it)", "PATH|URL"),
    Option("sample_rate", "--sample-rate", _float(0.0, 1.0), "fraction of inputs sent for scoring", "RATE"),
    Option("pass_mark", "--pass-mark", _float(0.0, 1.0), "a judged sample fails below this score", "SCORE"),
    Option("llm_base_url", "--llm-base-url", _url,
           "OpenAI-compatible API base URL (POST {base}/chat/completions)", "URL"),
    Option("model", "--llm-model", _text, "model name sent to the LLM endpoint", "NAME", ("--model",)),
    Option("api_key_env", "--llm-api-key-env", _env_name, "environment variable holding the LLM API key", "VAR",
           ("--api-key-env",)),
    Option("api_key_file", "--llm-api-key-file", _text,
           "file holding the LLM API key, read when the variable is unset or empty", "PATH", ("--api-key-file",)),
    Option("concurrency", "--concurrency", _int(1, 1024), "LLM calls in flight at once (worker tasks)", "N"),
    Option("timeout", "--timeout", _float(0.0, lo_open=True), "seconds per LLM call", "SECONDS"),
    Option("retries", "--retries", _int(0, 100), "retries of a failed LLM call", "N"),
    Option("backoff", "--backoff", _float(0.0), "seconds before the first retry (doubling)", "SECONDS"),
    Option("response_format", "--llm-response-format",
           _choice("none", "json_object", "json_schema", "json_object_schema"),
           "how verdicts are asked for as JSON: none, json_object (JSON mode), json_schema (OpenAI's "
           "structured outputs) or json_object_schema (llama-cpp-python's server); see canarist.judge.llm",
           "FORMAT", ("--response-format",)),
    Option("token_budget", "--token-budget", _int(1), "LLM tokens one release may spend; none = no limit", "N"),
    Option("global_token_budget", "--global-token-budget", _int(1),
           "LLM tokens all releases together may spend in any 24 hours (counted by the hour); none = no limit",
           "N"),
    Option("rubric_file", "--rubric-file", _text, "file with the scoring rubric; none = the built-in one",
           "PATH"),
    Option("queue_size", "--queue-size", _int(1), "scoring jobs held in memory; the rest wait in the database", "N"),
    Option("max_body_bytes", "--max-body-bytes", _int(1024), "largest POST /v1/samples body accepted", "BYTES"),
    Option("ingest_concurrency", "--ingest-concurrency", _int(1, 1024),
           "POST /v1/samples bodies read and parsed at once; more wait (memory: about 4 x max-body-bytes each)",
           "N"),
    Option("shutdown_grace", "--shutdown-grace", _float(0.0),
           "seconds in-flight LLM calls may finish on SIGTERM (unfinished work resumes on restart)", "SECONDS"),
    Option("pair_window", "--pair-window", _float(0.0, lo_open=True),
           "seconds within which answers to the same input without a common request id are paired", "SECONDS"),
    Option("retention", "--retention", _duration,
           "how long samples and pairs are kept after ingestion, in seconds or with a unit (36h, 14d); "
           "0 keeps them forever", "DURATION"),
    Option("claim_lease", "--claim-lease", _float(0.0, lo_open=True),
           "seconds a replica's claim on a scoring job lasts; a dead replica's jobs are taken over after it. "
           "none = 2 x timeout x (retries + 1)", "SECONDS"),
    Option("auth", "--auth", _choice("none", "kubernetes"),
           "who may call: none (anyone who reaches the port) or kubernetes (ServiceAccount tokens, TokenReview)",
           "MODE"),
    Option("auth_audience", "--auth-audience", _text, "the audience callers' tokens must be issued for", "AUDIENCE"),
    Option("kubeconfig", "--kubeconfig", _text,
           "kubeconfig for TokenReview; none = the pod's own ServiceAccount (in-cluster)", "PATH"),
    Option("readers", "--readers", _names,
           "identities that may read verdicts of every namespace (the operator), comma-separated: "
           "namespace/serviceaccount, a username, or group:NAME", "NAMES"),
    Option("admins", "--admins", _names,
           "identities that may export users' texts and delete a release's data, comma-separated", "NAMES"),
)
_BY_FIELD = {opt.field: opt for opt in OPTIONS}


@dataclass(frozen=True)
class JudgeConfig:
    listen: str = "127.0.0.1:8080"
    db: str = "canarist-judge.db"
    sample_rate: float = 0.1
    pass_mark: float = 0.5
    llm_base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_key_file: str | None = None
    concurrency: int = 4
    timeout: float = 30.0
    retries: int = 2
    backoff: float = 0.5
    # JSON mode: what every OpenAI-compatible API accepts; the schema formats need a server that knows them.
    response_format: str = "json_object"
    token_budget: int | None = None
    global_token_budget: int | None = None
    rubric_file: str | None = None
    queue_size: int = 1000
    # Sized for the chart's 512 MiB limit: 8 bodies at once of 4 MiB, each about 4 times its
    # size once parsed, stay near 128 MiB. The reporter posts at most 1 MB.
    max_body_bytes: int = 4 * 1024 * 1024
    ingest_concurrency: int = 8
    shutdown_grace: float = 5.0
    pair_window: float = 120.0
    retention: float = 14 * 86400.0
    claim_lease: float | None = None
    auth: str = "none"
    auth_audience: str = "canarist-judge"
    kubeconfig: str | None = None
    readers: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            try:
                object.__setattr__(self, f.name, _BY_FIELD[f.name].check(value))
            except ValueError as exc:
                raise ConfigError(f"{f.name}: {exc}") from None

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]

    @property
    def lease(self) -> float:
        """Seconds a claim lasts: by default twice the longest one LLM call may take with its retries."""
        return self.claim_lease if self.claim_lease is not None else 2 * self.timeout * (self.retries + 1)

    def require_llm(self) -> None:
        """Raise ConfigError unless the settings a real LLM scorer needs are there."""
        for name in ("llm_base_url", "model"):
            if getattr(self, name) is None:
                opt = _BY_FIELD[name]
                raise ConfigError(f"{opt.flag} (or {opt.env}) is required: {opt.help}")

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any] | argparse.Namespace | None = None,
                     env: Mapping[str, str] | None = None) -> JudgeConfig:
        """Flags (None = not given) beat environment variables (empty = unset) beat defaults."""
        if isinstance(flags, argparse.Namespace):
            flags = vars(flags)
        flags, env = flags or {}, env or {}
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            raw, source = flags.get(opt.field), opt.flag
            if raw is None and env.get(opt.env, "").strip():
                raw, source = env[opt.env], opt.env
            if raw is None:
                continue
            try:
                values[opt.field] = opt.check(raw)
            except ValueError as exc:
                raise ConfigError(f"{source}: {exc}") from None
        return cls(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per JudgeConfig field, all defaulting to None so that env fallbacks can apply."""
    defaults = JudgeConfig()
    for opt in OPTIONS:
        default = getattr(defaults, opt.field)
        shown = "none" if default is None else default
        parser.add_argument(opt.flag, *opt.aliases, dest=opt.field, default=None, metavar=opt.metavar,
                            help=f"{opt.help} [env {opt.env}; default: {shown}]")
