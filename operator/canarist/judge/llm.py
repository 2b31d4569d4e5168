"""An async client of an OpenAI-compatible `POST {base_url}/chat/completions` (vLLM, Ollama, OpenAI, gateways).

    llm = LLMClient("http://127.0.0.1:11434/v1", "qwen2.5:7b", load_api_key("OPENAI_API_KEY", None))
    content, tokens = await llm.chat([{"role": "user", "content": "..."}])
    await llm.close()

Each attempt has its own time limit (`timeout`). Connection errors, timeouts, 429 and 5xx are
retried `retries` times (so `retries + 1` attempts at most) after an exponential back-off with
jitter (`backoff * 2**n`, scaled by a random factor in [0.5, 1]; a `Retry-After` of up to 30 s is
honoured); any other failure, and the last failed attempt, raise JudgeError. The API key is kept
in an object that never prints it, and is redacted from every message this module writes.

`response_format` says how the client asks for JSON (`RESPONSE_FORMATS`); a call passes the JSON
Schema of the answer it expects (`chat(..., schema=...)`), which the schema formats send along:

- `none`: no `response_format` field; the prompt alone asks for JSON.
- `json_object` (the default): `{"type": "json_object"}`, JSON mode, which hosted
  OpenAI-compatible APIs (OpenAI, vLLM, Ollama, most gateways) accept; it promises some JSON
  object, not the verdict's keys.
- `json_schema`: OpenAI's structured outputs, `{"type": "json_schema", "json_schema": {"name",
  "strict": true, "schema"}}` (OpenAI, vLLM, llama.cpp's own llama-server, recent Ollama).
- `json_object_schema`: `{"type": "json_object", "schema": {...}}`, the shape of
  llama-cpp-python's server, whose request model knows no "json_schema" type (it answers such a
  request with HTTP 500) and which turns the schema into a grammar.

A small model (SmolLM2-135M in tests/integration/test_judge_real_model.py) returns arbitrary JSON
in JSON mode; constrained to the schema, its verdicts parse.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from .types import JudgeError

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 30.0
REDACTED = "***"
RESPONSE_FORMATS = ("none", "json_object", "json_schema", "json_object_schema")
DEFAULT_RESPONSE_FORMAT = "json_object"


class _Secret:
    """Holds the API key; its repr and str never show it, and it cannot be pickled."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return repr(REDACTED)

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("an API key is not picklable")


def load_api_key(env_var: str | None, file: str | os.PathLike[str] | None) -> str | None:
    """The API key from the environment variable `env_var` if it is set and not empty, otherwise
    from `file` (e.g. a mounted Secret), stripped of surrounding white space. None when neither is
    given or the variable is unset and no file is given (e.g. a local Ollama needs no key).

    Raises ValueError, without the key's text, for an unreadable or empty file or a key holding
    white space or control characters inside.
    """
    key: str | None = None
    source = ""
    if env_var:
        value = os.environ.get(env_var, "").strip()
        if value:
            key, source = value, f"environment variable {env_var}"
    if key is None and file:
        path = Path(file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the API key file {path}: {type(exc).__name__}") from None
        source = f"file {path}"
        if not key:
            raise ValueError(f"the API key file {path} is empty")
    if key is not None and any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise ValueError(f"the API key from {source} contains white space or control characters")
    return key


class LLMClient:
    """Async client of one model behind an OpenAI-compatible chat-completions endpoint.

    Use it from one event loop (its HTTP session is made on first use, in the running loop);
    concurrent `chat` calls share the session. `close()` when done.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None, *, timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.5, max_tokens: int = 300,
                 response_format: str = DEFAULT_RESPONSE_FORMAT) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if not model:
            raise ValueError("model must be named")
        if not timeout > 0 or not math.isfinite(timeout):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if int(retries) != retries or retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
        if not backoff >= 0:
            raise ValueError(f"backoff must be >= 0 seconds, got {backoff!r}")
        if int(max_tokens) != max_tokens or max_tokens < 1:
            raise ValueError(f"max_tokens must be a whole number >= 1, got {max_tokens!r}")
        if response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                             f"got {response_format!r}")
        if api_key is not None and (not api_key or any(ch.isspace() or ord(ch) < 32 for ch in api_key)):
            raise ValueError("api_key must be None or a non-empty string without white space")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_tokens = int(max_tokens)
        self.response_format = response_format
        self._api_key = _Secret(api_key) if api_key is not None else None
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        key = REDACTED if self._api_key is not None else None
        return (f"LLMClient(base_url={self.base_url!r}, model={self.model!r}, api_key={key!r}, "
                f"timeout={self.timeout}, retries={self.retries}, backoff={self.backoff}, "
                f"max_tokens={self.max_tokens}, response_format={self.response_format!r})")

    def __getstate__(self):
        raise TypeError("an LLMClient is not picklable")

    # -- the one call ------------------------------------------------------------------------

    async def chat(self, messages: list[dict], *, json_mode: bool = True,
                   schema: Mapping[str, Any] | None = None, schema_name: str = "verdict") -> tuple[str, int]:
        """The assistant's message content and the total tokens spent (from `usage`, else estimated).

        `json_mode=False` asks for plain text. Otherwise the answer is asked for as JSON the way
        the client's `response_format` says; `schema` (the JSON Schema of the expected object,
        named `schema_name`) is sent by the schema formats, which without one fall back on
        `json_object`.
        """
        if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
        payload: dict[str, Any] = {
            "model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens,
        }
        if json_mode:
            response_format = self.response_format_for(schema, schema_name)
            if response_format is not None:
                payload["response_format"] = response_format
        data = json.dumps(payload).encode()
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            retry_after: float | None = None
            try:
                status, body, retry_after = await self._post(data)
            except (asyncio.TimeoutError, TimeoutError):
                problem = f"no answer within {self.timeout:g}s"
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                problem = f"connection failed ({type(exc).__name__}: {self._redact(str(exc)) or 'no detail'})"
            except aiohttp.ClientError as exc:
                raise JudgeError(self._redact(
                    f"LLM call to {self.url} failed: {type(exc).__name__}: {exc}")) from None
            else:
                elapsed = time.monotonic() - started
                if status == 200:
                    log.debug("LLM %s answered in %.3fs (attempt %d)", self.model, elapsed, attempt)
                    return self._parse(body, messages)
                problem = f"HTTP {status}: {self._snippet(body)}"
                if status != 429 and not 500 <= status <= 599:
                    raise JudgeError(f"LLM call to {self.url} failed with {problem} (not retried)")
            if attempt == attempts:
                raise JudgeError(f"LLM call to {self.url} failed after {attempts} attempt(s); last: {problem}")
            delay = self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
            log.warning("LLM call to %s failed (attempt %d of %d): %s; retrying in %.2fs",
                        self.url, attempt, attempts, problem, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def response_format_for(self, schema: Mapping[str, Any] | None,
                            schema_name: str = "verdict") -> dict[str, Any] | None:
        """The `response_format` field this client sends for an answer of `schema` (None: no field)."""
        if self.response_format == "none":
            return None
        if schema is None or self.response_format == "json_object":
            return {"type": "json_object"}
        if self.response_format == "json_schema":
            # strict: the server must follow the schema; without it OpenAI takes it as a hint.
            return {"type": "json_schema", "json_schema": {"name": schema_name, "strict": True, "schema": dict(schema)}}
        return {"type": "json_object", "schema": dict(schema)}

    async def _post(self, data: bytes) -> tuple[int, bytes, float | None]:
        session = self._get_session()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        async with session.post(self.url, data=data, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
            body = await response.read()
            return response.status, body, _retry_after(response.headers.get("Retry-After"))

    def _parse(self, body: bytes, messages: list[dict]) -> tuple[str, int]:
        try:
            doc = json.loads(body)
            message = doc["choices"][0]["message"]
            content = message["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(f"LLM at {self.url} answered 200 without a chat completion: "
                             f"{self._snippet(body)}") from None
        if not isinstance(content, str):
            detail = message.get("refusal") if isinstance(message, dict) else None
            raise JudgeError(f"LLM at {self.url} answered no text content"
                             + (f" (refusal: {self._redact(str(detail))[:200]})" if detail else ""))
        return content, _tokens(doc.get("usage") if isinstance(doc, dict) else None, messages, content)

    # -- helpers -----------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # One connection pool per client; no proxy from the environment (trust_env=False).
            self._session = aiohttp.ClientSession(headers={"User-Agent": "canarist-judge"})
        return self._session

    def _redact(self, text: str) -> str:
        if self._api_key is not None:
            text = text.replace(self._api_key.reveal(), REDACTED)
        return text

    def _snippet(self, body: bytes, limit: int = 200) -> str:
        text = " ".join(body.decode("utf-8", errors="replace").split())
        text = self._redact(text)  # before cutting, so no part of the key survives the cut
        return repr(text[:limit] + ("..." if len(text) > limit else ""))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "LLMClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own back-off
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def estimate_tokens(text: str) -> int:
    """A rough token count (4 characters a token) for servers that report no usage."""
    return max(1, len(text) // 4)


def _tokens(usage: Any, messages: list[dict], content: str) -> int:
    if isinstance(usage, dict):
        total = usage.get("total_tokens")
        if isinstance(total, int) and not isinstance(total, bool) and total > 0:
            return total
        parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
        if all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in parts) and sum(parts) > 0:
            return sum(parts)
    prompt = "".join(str(m.get("content", "")) for m in messages)
    # a few tokens of chat-template overhead per message
    return estimate_tokens(prompt) + estimate_tokens(content) + 4 * len(messages)
