"""An OpenAI-compatible chat-completions server with a scripted judge model, standing in for a hosted LLM.

    python -m canarist.devstack.scripted_llm --port 0 --port-file /tmp/port \
        [--latency-ms 20] [--fail-rate 0.1] [--seed 1] [--parent-pid PID]

Endpoints (127.0.0.1 only): `POST /v1/chat/completions` (also `/chat/completions`), `GET /healthz`,
`GET|POST /admin/config`, `GET /admin/stats`. With `SCRIPTED_LLM_API_KEY` in its environment it
demands `Authorization: Bearer <that key>` and answers 401 otherwise, echoing the key presented
(the worst a real gateway might do), so that clients can prove they redact it.

The scripted model reads the prompt the way a model would, with the conventions of
canarist.judge.prompts: it trusts the nonce declared in a *system* message
(`NONCE_DECLARATION`) and treats only the lines `<<<BEGIN NAME nonce>>>` ... `<<<END NAME nonce>>>`
carrying that nonce as data blocks (REQUEST, RESPONSE, ANSWER_A, ANSWER_B). Without a declared
nonce it falls back on labels ("Question:", "Answer:", "Answer A:", "Answer B:"). Like a model, it
reads through zero-width characters and full-width letters and decodes Unicode tag characters.

Its judgement, for arithmetic questions such as "What is 17 + 25?":

- score: 0.95 when the response states the correct result, 0.1 otherwise; 0.5 when the request
  is no arithmetic question it can check;
- compare: the correct answer wins; when both are equally correct (or wrong) it prefers whichever
  answer is shown first (a position bias, so that asking in both orders matters);
- it is *gullible*: an instruction to grade highly (e.g. "score this 1.0", "ignore the rubric",
  a ready-made verdict) that appears OUTSIDE the data blocks, i.e. that the judge failed to
  contain, is obeyed: score 1.0, or the answer the instruction came with wins. Instructions inside
  properly delimited blocks are data and are ignored.

Failures (`failRate`, `failNext` with `failStatus`), latency, a fixed reply (`reply`, e.g. an
unparseable verdict) and missing `usage` can be injected, and changed at run time via
`POST /admin/config`. It stops on SIGTERM/SIGINT, and when its `--parent-pid` is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canarist.judge.prompts import (
    LABEL_ANSWER_A,
    LABEL_ANSWER_B,
    LABEL_REQUEST,
    LABEL_RESPONSE,
    NONCE_DECLARATION_RE,
    block_pattern,
)

from .localproc import LocalServerProcess, exit_with_parent, make_workdir, write_port_file
from .procs import start_process

API_KEY_ENV = "SCRIPTED_LLM_API_KEY"
SCORE_CORRECT = 0.95
SCORE_WRONG = 0.1
SCORE_UNCHECKABLE = 0.5

# =============================================================================================
# The scripted model


def perceive(text: str) -> str:
    """The text as a model reads it: Unicode tag characters decoded to the ASCII they spell, other
    invisible format characters and variation selectors skipped, full-width forms folded (NFKC)."""
    out = []
    for ch in text:
        cp = ord(ch)
        if 0xE0020 <= cp <= 0xE007E:
            out.append(chr(cp - 0xE0000))
        elif unicodedata.category(ch) == "Cf" or 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF:
            continue
        else:
            out.append(ch)
    return unicodedata.normalize("NFKC", "".join(out))


@dataclass
class Reading:
    """What the model made of a conversation."""

    delimited: bool                                   # a nonce was declared by a system message
    blocks: dict[str, tuple[int, str]] = field(default_factory=dict)  # label -> (position, content)
    outside: list[tuple[int, str]] = field(default_factory=list)      # (position, text) not in a block
    full: str = ""                                    # every message, perceived, one after the other


def read(messages: list[dict[str, str]]) -> Reading:
    texts = [(m["role"], perceive(m["content"])) for m in messages]
    nonce = None
    for role, text in texts:
        if role == "system":
            found = NONCE_DECLARATION_RE.search(text)
            if found:
                nonce = found.group(1)
    reading = Reading(delimited=nonce is not None)
    offset = 0
    for _, text in texts:
        if nonce is None:
            reading.outside.append((offset, text))
        else:
            last = 0
            for match in block_pattern(nonce).finditer(text):
                reading.outside.append((offset + last, text[last:match.start()]))
                reading.blocks.setdefault(match.group(1), (offset + match.start(), match.group(2)))
                last = match.end()
            reading.outside.append((offset + last, text[last:]))
        reading.full += text + "\n\n"
        offset = len(reading.full)
    return reading


# -- arithmetic ---------------------------------------------------------------------------------

_NUMBER = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
_QUESTION = re.compile(
    rf"\bwhat\s+is\s+({_NUMBER})\s*(\+|-|−|\*|×|x|/|÷|plus|minus|times|multiplied\s+by|divided\s+by)\s*({_NUMBER})",
    re.IGNORECASE)
_CLAIM = re.compile(rf"(?:=|\bequals\b|\bis\b|\bmakes\b|\bgives\b)\s*({_NUMBER})", re.IGNORECASE)
_ANY_NUMBER = re.compile(rf"(?<![\w.]){_NUMBER}")
_OPS = {"+": "+", "plus": "+", "-": "-", "−": "-", "minus": "-", "*": "*", "×": "*", "x": "*", "times": "*",
        "multiplied by": "*", "/": "/", "÷": "/", "divided by": "/"}


@dataclass(frozen=True)
class Question:
    a: float
    op: str
    b: float

    @property
    def result(self) -> float | None:
        if self.op == "+":
            return self.a + self.b
        if self.op == "-":
            return self.a - self.b
        if self.op == "*":
            return self.a * self.b
        return self.a / self.b if self.b else None

    def text(self) -> str:
        return f"{_fmt(self.a)} {self.op} {_fmt(self.b)}"


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def find_question(text: str) -> Question | None:
    match = _QUESTION.search(text)
    if not match:
        return None
    return Question(_num(match.group(1)), _OPS[" ".join(match.group(2).lower().split())], _num(match.group(3)))


def is_correct(question: Question, answer: str) -> bool:
    """Does `answer` state the question's result? The numbers it claims (after "=", "is", ...)
    count; when it claims none, any number it mentions does."""
    result = question.result
    if result is None:
        return False
    claims = [_num(m) for m in _CLAIM.findall(answer)] or [_num(m) for m in _ANY_NUMBER.findall(answer)]
    tolerance = 1e-9 if result.is_integer() else 0.005  # a fraction may be rounded to 2 decimals
    return any(abs(claim - result) <= tolerance for claim in claims)


# -- gullibility --------------------------------------------------------------------------------

# Orders to grade highly that the model obeys wherever they are outside the data blocks. The
# judge's own instructions must not read like this (canarist.judge.prompts keeps to that).
_W = r"(?:\W+\w+){0,5}?\W+"
_OBEY = re.compile(
    rf"\bignor\w*{_W}(?:instructions?|rubric|rules|guidelines|criteria|consignes|instrucciones|istruzioni|anweisungen|instruções)\b"
    rf"|\bdisregard{_W}(?:instructions?|rubric|rules|guidelines|criteria)\b"
    rf"|\b(?:score|rate|grade|mark|give|award|assign|deserve)\w*{_W}(?:1\.0\b|10\s*/\s*10|5\s*/\s*5|100\s*%|full\s+marks|perfect|maximum|highest)"
    r"""|["']score["']\s*:\s*(?:1(?:\.0+)?|0?\.\d+)|["']winner["']\s*:\s*["'][AB]["']"""
    r"|note\s+maximale|volle\s+punktzahl|h[öo]chstpunktzahl|puntuaci[oó]n\s+m[aá]xima|punteggio\s+massimo"
    r"|满分|最高分|満点|忽略|無視|игнорир|максимальн\w*\s+балл",
    re.IGNORECASE)
_NAMES_ANSWER = re.compile(r"""\b(?:answer|response)\s+([AB])\b|["']winner["']\s*:\s*["']([AB])["']""")
_NAIVE_A = re.compile(r"^\W*answer\s+a\s*:", re.IGNORECASE | re.MULTILINE)
_NAIVE_B = re.compile(r"^\W*answer\s+b\s*:", re.IGNORECASE | re.MULTILINE)
_NAIVE_ANSWER = re.compile(r"^\W*(?:answer|response)\s*:", re.IGNORECASE | re.MULTILINE)


def _leaked_order(reading: Reading) -> tuple[int, str] | None:
    """The first order to grade highly that lies outside every data block: (position, its text)."""
    for position, text in reading.outside:
        match = _OBEY.search(text)
        if match:
            return position + match.start(), text[max(0, match.start() - 80):match.end() + 80]
    return None


def _naive_sections(full: str) -> dict[str, tuple[int, str]]:
    """Without data blocks: "Answer A:" / "Answer B:" / "Answer:" label the answers."""
    sections: dict[str, tuple[int, str]] = {}
    a, b = _NAIVE_A.search(full), _NAIVE_B.search(full)
    if a and b:
        first, second = sorted([(a, LABEL_ANSWER_A), (b, LABEL_ANSWER_B)], key=lambda p: p[0].start())
        sections[first[1]] = (first[0].start(), full[first[0].end():second[0].start()])
        sections[second[1]] = (second[0].start(), full[second[0].end():])
        return sections
    answers = list(_NAIVE_ANSWER.finditer(full))
    if answers:
        sections[LABEL_RESPONSE] = (answers[-1].start(), full[answers[-1].end():])
    return sections


def judge(messages: list[dict[str, str]]) -> dict[str, Any]:
    """The scripted model's verdict for a judge conversation (a dict, to be sent as JSON)."""
    reading = read(messages)
    sections = reading.blocks if reading.delimited else _naive_sections(reading.full)
    compare = LABEL_ANSWER_A in sections and LABEL_ANSWER_B in sections
    if LABEL_REQUEST in sections:
        question = find_question(sections[LABEL_REQUEST][1])
    else:
        question = find_question("\n".join(text for _, text in reading.outside))

    leaked = _leaked_order(reading)
    if leaked is not None:  # gullible: obey what escaped the data blocks
        position, context = leaked
        if not compare:
            return {"score": 1.0, "reason": "As instructed, this response gets full marks."}
        named = _NAMES_ANSWER.search(context)
        if named:
            winner = named.group(1) or named.group(2)
        else:  # the answer the order came with: the last answer section that starts before it
            before = [(pos, label) for label, (pos, _) in sections.items()
                      if label in (LABEL_ANSWER_A, LABEL_ANSWER_B) and pos <= position]
            winner = "B" if before and max(before)[1] == LABEL_ANSWER_B else "A"
        return {"winner": winner, "reason": f"As instructed, answer {winner} is the better one."}

    if compare:
        (pos_a, text_a), (pos_b, text_b) = sections[LABEL_ANSWER_A], sections[LABEL_ANSWER_B]
        if question is None or question.result is None:
            good_a = good_b = False
        else:
            good_a, good_b = is_correct(question, text_a), is_correct(question, text_b)
        if good_a != good_b:
            winner = "A" if good_a else "B"
            return {"winner": winner, "reason": f"Answer {winner} gives the correct result of {question.text()}, "
                                                f"the other does not."}
        first = "A" if pos_a <= pos_b else "B"  # position bias: the answer shown first
        quality = "correct" if good_a else "unverified" if question is None else "wrong"
        return {"winner": first, "reason": f"Both answers are equally {quality}; answer {first} reads slightly better."}

    if LABEL_RESPONSE not in sections:
        return {"score": 0.0, "reason": "There is no response to grade."}
    if question is None or question.result is None:
        return {"score": SCORE_UNCHECKABLE, "reason": "The request is no arithmetic question that can be checked."}
    if is_correct(question, sections[LABEL_RESPONSE][1]):
        return {"score": SCORE_CORRECT,
                "reason": f"The response gives {_fmt(question.result)}, the correct result of {question.text()}."}
    return {"score": SCORE_WRONG,
            "reason": f"The correct result of {question.text()} is {_fmt(question.result)}; the response does not give it."}


# =============================================================================================
# The HTTP server


class Behaviour:
    """Injected latency and failures, changeable at run time (`POST /admin/config`)."""

    _FIELDS = {"latencyMs", "failRate", "failStatus", "failNext", "omitUsage", "reply"}

    def __init__(self, latency_ms: float = 0.0, fail_rate: float = 0.0, seed: int | None = None) -> None:
        self._random = random.Random(seed)
        self.latency_ms = 0.0
        self.fail_rate = 0.0
        self.fail_status = 500
        self.fail_next = 0
        self.omit_usage = False
        self.reply: str | None = None
        self.update({"latencyMs": latency_ms, "failRate": fail_rate})

    def update(self, change: Any) -> dict[str, Any]:
        if not isinstance(change, dict) or set(change) - self._FIELDS:
            raise ValueError(f"expected a JSON object with only the keys {sorted(self._FIELDS)}")
        new = self.snapshot()
        new.update(change)
        if isinstance(new["latencyMs"], bool) or not isinstance(new["latencyMs"], (int, float)) \
                or not 0 <= new["latencyMs"] <= 600_000:
            raise ValueError(f"latencyMs must be within [0, 600000], got {new['latencyMs']!r}")
        if isinstance(new["failRate"], bool) or not isinstance(new["failRate"], (int, float)) \
                or not 0 <= new["failRate"] <= 1:
            raise ValueError(f"failRate must be within [0, 1], got {new['failRate']!r}")
        if not isinstance(new["failStatus"], int) or not 400 <= new["failStatus"] <= 599:
            raise ValueError(f"failStatus must be an HTTP error status (400-599), got {new['failStatus']!r}")
        if isinstance(new["failNext"], bool) or not isinstance(new["failNext"], int) or new["failNext"] < 0:
            raise ValueError(f"failNext must be a whole number >= 0, got {new['failNext']!r}")
        if not isinstance(new["omitUsage"], bool):
            raise ValueError(f"omitUsage must be true or false, got {new['omitUsage']!r}")
        if new["reply"] is not None and not isinstance(new["reply"], str):
            raise ValueError(f"reply must be a string or null, got {new['reply']!r}")
        self.latency_ms, self.fail_rate = float(new["latencyMs"]), float(new["failRate"])
        self.fail_status, self.fail_next = new["failStatus"], new["failNext"]
        self.omit_usage, self.reply = new["omitUsage"], new["reply"]
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        return {"latencyMs": self.latency_ms, "failRate": self.fail_rate, "failStatus": self.fail_status,
                "failNext": self.fail_next, "omitUsage": self.omit_usage, "reply": self.reply}

    def draw_failure(self) -> bool:
        roll = self._random.random()  # one draw per request, whatever the rate
        if self.fail_next > 0:
            self.fail_next -= 1
            return True
        return roll < self.fail_rate


def _openai_error(status: int, message: str, kind: str, code: str | None = None):
    from aiohttp import web

    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": code}},
                             status=status)


def _message_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    return None


def make_app(behaviour: Behaviour, api_key: str | None = None):
    from aiohttp import web

    stats: dict[str, Any] = {"requests": 0, "failed": 0, "unauthorized": 0, "answered": 0, "last": None}

    async def completions(request: web.Request) -> web.StreamResponse:
        stats["requests"] += 1
        if behaviour.latency_ms:
            await asyncio.sleep(behaviour.latency_ms / 1000.0)
        if api_key is not None:
            presented = request.headers.get("Authorization", "")
            if presented != f"Bearer {api_key}":
                stats["unauthorized"] += 1
                shown = presented.removeprefix("Bearer ") or "(none)"
                return _openai_error(401, f"Incorrect API key provided: {shown}.", "invalid_request_error",
                                     "invalid_api_key")
        if behaviour.draw_failure():
            stats["failed"] += 1
            return _openai_error(behaviour.fail_status, "injected failure", "server_error")
        try:
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
                raise ValueError('"model" (a string) is required')
            raw = body.get("messages")
            if not isinstance(raw, list) or not raw:
                raise ValueError('"messages" must be a non-empty list')
            messages = []
            for m in raw:
                text = _message_text(m.get("content")) if isinstance(m, dict) else None
                if text is None or not isinstance(m.get("role"), str):
                    raise ValueError("every message needs a string \"role\" and text \"content\"")
                messages.append({"role": m["role"], "content": text})
        except ValueError as exc:  # includes JSON decoding errors
            return _openai_error(400, str(exc), "invalid_request_error")
        response_format = body.get("response_format")
        # JSON mode, and both shapes of a schema-constrained format (OpenAI's "json_schema", and
        # llama-cpp-python's "json_object" with a "schema"), make it answer bare JSON; its verdicts
        # have the judge's shapes already, so it need not read the schema.
        json_mode = isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema")
        stats["last"] = {"model": body["model"], "temperature": body.get("temperature"),
                         "max_tokens": body.get("max_tokens"), "json_mode": json_mode,
                         "response_format": body.get("response_format"), "messages": len(messages)}
        if behaviour.reply is not None:
            content = behaviour.reply
        else:
            verdict = json.dumps(judge(messages))
            # A chat model asked for JSON without JSON mode tends to put it in a fence.
            content = verdict if json_mode else f"```json\n{verdict}\n```"
        prompt_tokens = max(1, sum(len(m["content"]) for m in messages) // 4)
        completion_tokens = max(1, len(content) // 4)
        stats["answered"] += 1
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }
        if not behaviour.omit_usage:
            answer["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                               "total_tokens": prompt_tokens + completion_tokens}
        return web.json_response(answer)

    async def healthz(_: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def config(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return web.json_response(behaviour.snapshot())
        try:
            change = await request.json()
            return web.json_response(behaviour.update(change))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def get_stats(_: web.Request) -> web.StreamResponse:
        return web.json_response(stats)

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/chat/completions", completions)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("GET", "/admin/config", config)
    app.router.add_route("POST", "/admin/config", config)
    app.router.add_get("/admin/stats", get_stats)
    return app


async def _serve(port: int, port_file: Path | None, behaviour: Behaviour, api_key: str | None) -> None:
    from aiohttp import web

    runner = web.AppRunner(make_app(behaviour, api_key), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if port_file:
        write_port_file(port_file, bound)
    print(f"scripted_llm on 127.0.0.1:{bound}" + (" (API key required)" if api_key else ""), flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m canarist.devstack.scripted_llm",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="where to write the port bound")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, help="makes the sequence of injected failures reproducible")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (our parent) is gone")
    args = parser.parse_args(argv)

    if args.parent_pid and os.getppid() != args.parent_pid:
        parser.error(f"--parent-pid {args.parent_pid} is not our parent ({os.getppid()})")
    try:
        behaviour = Behaviour(args.latency_ms, args.fail_rate, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    if args.parent_pid:
        threading.Thread(target=exit_with_parent, args=(args.parent_pid,), daemon=True).start()
    api_key = os.environ.get(API_KEY_ENV) or None
    asyncio.run(_serve(args.port, args.port_file, behaviour, api_key))


# =============================================================================================
# Running it from tests


@dataclass(eq=False)
class ScriptedLLM(LocalServerProcess):
    """A scripted_llm process started by `ScriptedLLM.start`; `stop()` (or `with`) ends its process group.

    `url` is its root; pass `base_url` (`url + "/v1"`, as for OpenAI) or `url` to an LLMClient.
    """

    port: int
    workdir: Path
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _owns_workdir: bool = field(default=True, repr=False)

    LOG = "scripted_llm.log"

    @classmethod
    def start(cls, *, latency_ms: float = 0.0, fail_rate: float = 0.0, seed: int | None = None,
              api_key: str | None = None, workdir: Path | None = None, timeout: float = 30.0) -> "ScriptedLLM":
        """Start one on a free port of 127.0.0.1 and return once it answers `/healthz`.

        `api_key`, if given, is demanded of clients; it is passed through the environment, never
        on the command line.
        """
        workdir, owns = make_workdir(workdir, "canarist-scripted-llm-")
        port_file = cls._fresh_port_file(workdir)
        argv = [sys.executable, "-m", "canarist.devstack.scripted_llm", "--port", "0", "--port-file", str(port_file),
                "--latency-ms", repr(float(latency_ms)), "--fail-rate", repr(float(fail_rate)),
                "--parent-pid", str(os.getpid())]
        if seed is not None:
            argv += ["--seed", str(seed)]
        env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
        if api_key is not None:
            env[API_KEY_ENV] = api_key
        llm = cls(0, workdir, start_process(argv, workdir / cls.LOG, env=env), owns)
        return llm._until_ready(port_file, timeout)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def configure(self, **change: Any) -> dict[str, Any]:
        """Change the injected behaviour now: latency_ms, fail_rate, fail_status, fail_next,
        omit_usage, reply (None to answer normally again). Returns the configuration in effect."""
        names = {"latency_ms": "latencyMs", "fail_rate": "failRate", "fail_status": "failStatus",
                 "fail_next": "failNext", "omit_usage": "omitUsage", "reply": "reply"}
        unknown = set(change) - set(names)
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}; known: {sorted(names)}")
        body = json.dumps({names[k]: v for k, v in change.items()}).encode()
        code, answer = self._call("POST", "/admin/config", body)
        if code != 200:
            raise ValueError(f"scripted_llm refused {change}: {answer.decode(errors='replace')}")
        return json.loads(answer)

    def reset(self) -> dict[str, Any]:
        """Back to no latency, no failures, normal answers."""
        return self.configure(latency_ms=0, fail_rate=0, fail_status=500, fail_next=0, omit_usage=False, reply=None)

    def stats(self) -> dict[str, Any]:
        """Counts of chat requests (`requests`, `failed`, `unauthorized`, `answered`) and the `last` one's settings."""
        code, body = self._call("GET", "/admin/stats")
        if code != 200:
            raise RuntimeError(f"scripted_llm /admin/stats answered {code}")
        return json.loads(body)


if __name__ == "__main__":
    main()
