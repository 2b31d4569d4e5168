"""A tiny HTTP application standing in for one version (stable or canary) of a user's AI service.

No kubelet runs containers in the local stack (DESIGN.md §5), so tests run each version as a
local process on 127.0.0.1 and let the real Prometheus scrape its `/metrics`. Failures and
latency are injected, and can be changed while it runs (`POST /admin/config`) so a test can
make a canary go bad in the middle of a rollout.

It answers arithmetic questions (`/answer?q=What is 17 + 25?` -> "17 + 25 = 42."). With
`--wrong-rate` some answers are wrong but just as plausible ("17 + 25 = 41."), with status 200
and unchanged latency: a quality regression that error-rate and latency metrics cannot see,
only a judge of the answers can. With `--judge-url` and `--release` every answer is reported to
canarist's judge through `canarist.judge.reporter.JudgeReporter`.

    python -m canarist.devstack.demoapp --name web --variant canary --deployment web \
        --revision abc --port 0 --port-file /tmp/port --error-rate 0.1 --latency-ms 5 --seed 1 \
        --wrong-rate 0.3 --judge-url http://127.0.0.1:8080 --release default/web

`--wrong-languages de` makes every answer to a request in that language (the first tag of its
Accept-Language header) wrong: a version that answers well in English and badly in German, which an
aggregate score over all traffic can hide and a cohort's own verdict cannot.

Endpoints: `GET|POST /answer?q=...`, `GET /metrics`, `GET /healthz`, `GET|POST /admin/config`.
Only `/answer` is application traffic: scrapes, health checks and admin calls are not counted,
so they cannot dilute an error rate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..judge.reporter import JudgeReporter, cohort_of, is_mirrored
from .localproc import LocalServerProcess, exit_with_parent, make_workdir, write_port_file
from .procs import start_process

# Prometheus client libraries' default buckets: fine enough for both 5ms and 2s answers.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
VARIANTS = ("primary", "canary")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


# -- answering ------------------------------------------------------------------------------------

_NUMBER = r"[-−]?\d+(?:\.\d+)?"
_OPERATORS = {"+": "+", "plus": "+", "-": "-", "−": "-", "minus": "-", "*": "*", "×": "*", "x": "*",
              "times": "*", "multiplied by": "*", "/": "/", "÷": "/", "divided by": "/"}
_QUESTION = re.compile(
    r"\s*(?:(?:what\s+is|what's|how\s+much\s+is|compute|calculate)\s+)?"
    rf"(?P<a>{_NUMBER})\s*(?P<op>multiplied\s+by|divided\s+by|plus|minus|times|[-+*/x×÷−])\s*(?P<b>{_NUMBER})"
    r"\s*[?.!=]?\s*", re.IGNORECASE)
CANNOT = "I can only do arithmetic."


def _number(text: str) -> Fraction:
    return Fraction(text.replace("−", "-"))


def _show(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.4f}".rstrip("0").rstrip(".")


_ROUNDING = re.compile(r"\bround\b.{0,60}?\bnearest\s+(?P<unit>ten|hundred|thousand|\d+)\b", re.IGNORECASE | re.DOTALL)
_UNITS = {"ten": 10, "hundred": 100, "thousand": 1000}


def rounding_in(prompt: str) -> int | None:
    """The one instruction of a system prompt the stand-in model follows: "round ... to the nearest
    ten" (or hundred, thousand, or a number). A prompt edit that sounds harmless (shorter, friendlier
    numbers) and makes most answers wrong: the kind of change canarist exists to catch."""
    match = _ROUNDING.search(prompt or "")
    if not match:
        return None
    unit = match["unit"].lower()
    return _UNITS.get(unit) or (int(unit) if unit.isdigit() and int(unit) > 0 else None)


def prompt_digest(prompt: str) -> str:
    """How an answer says which system prompt produced it, without repeating the prompt."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:12]


def answer_question(question: str, wrong_by: int = 0, round_to: int | None = None) -> tuple[str, bool | None]:
    """(answer, whether it is correct: None when the question is no arithmetic).

    `wrong_by` != 0 makes an arithmetic answer wrong by that much, in the same form as a right
    one: nothing but the number tells them apart. `round_to` rounds the result (a system prompt
    asked for it), which is wrong unless the result was already round.
    """
    match = _QUESTION.fullmatch(question)
    if not match:
        asked = " ".join(question.split())
        return (f'{CANNOT} You asked: "{asked}"' if asked
                else f'{CANNOT} Ask me, say, "What is 17 + 25?"'), None
    a, b = _number(match["a"]), _number(match["b"])
    op = _OPERATORS[" ".join(match["op"].lower().split())]
    expression = f"{_show(a)} {op} {_show(b)}"
    if op == "/" and b == 0:
        if wrong_by:
            return f"{expression} = 0.", False
        return f"{expression} has no answer: division by zero is undefined.", True
    result = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else Fraction(0)}[op]
    if round_to:
        rounded = Fraction(round(result / round_to) * round_to)
        return f"{expression} = {_show(rounded + wrong_by)}.", rounded == result and not wrong_by
    if wrong_by and result.denominator != 1:
        # 3.5 turns into 3.6 or 3.3, not 4.5: off in the last digit shown.
        decimals = len(_show(result).partition(".")[2])
        return f"{expression} = {_show(result + Fraction(wrong_by, 10 ** decimals))}.", False
    return f"{expression} = {_show(result + wrong_by)}.", not wrong_by


def language_of(accept_language: str | None) -> str:
    """The primary subtag of an Accept-Language header's first language ("de-CH,de;q=0.9" -> "de")."""
    first = (accept_language or "").split(",")[0].split(";")[0].strip().lower()
    return first.split("-")[0]


class Behaviour:
    """Injected error rate, latency and wrong-answer rate, changeable at run time; the random
    draws are seeded."""

    def __init__(self, error_rate: float, latency_ms: float, seed: int | None, wrong_rate: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        # Its own stream, so that a seed gives the same failures with or without wrong answers.
        self._wrong_random = random.Random(None if seed is None else f"wrong-{seed}")
        self.error_rate = 0.0
        self.latency_ms = 0.0
        self.wrong_rate = 0.0
        self.update(error_rate, latency_ms, wrong_rate)

    def update(self, error_rate: float | None = None, latency_ms: float | None = None,
               wrong_rate: float | None = None) -> dict[str, float]:
        if error_rate is not None and not 0.0 <= float(error_rate) <= 1.0:
            raise ValueError(f"errorRate must be within [0, 1], got {error_rate!r}")
        if latency_ms is not None and not 0.0 <= float(latency_ms) <= 60_000:
            raise ValueError(f"latencyMs must be within [0, 60000], got {latency_ms!r}")
        if wrong_rate is not None and not 0.0 <= float(wrong_rate) <= 1.0:
            raise ValueError(f"wrongRate must be within [0, 1], got {wrong_rate!r}")
        with self._lock:
            if error_rate is not None:
                self.error_rate = float(error_rate)
            if latency_ms is not None:
                self.latency_ms = float(latency_ms)
            if wrong_rate is not None:
                self.wrong_rate = float(wrong_rate)
            return self.snapshot()

    def snapshot(self) -> dict[str, float]:
        """The configuration; `wrongRate` only when not 0 (absent means 0), as before it existed."""
        config = {"errorRate": self.error_rate, "latencyMs": self.latency_ms}
        if self.wrong_rate:
            config["wrongRate"] = self.wrong_rate
        return config

    def draw(self) -> tuple[bool, float]:
        """(fail?, seconds to wait) for one request.

        One draw per request, even at rate 0 or 1, so that the sequence of outcomes for a given
        seed does not depend on when the rate was changed.
        """
        with self._lock:
            roll = self._random.random()
            return roll < self.error_rate, self.latency_ms / 1000.0

    def draw_wrong(self) -> int:
        """How far off the next answer is: 0 (right), or ±1 or ±2. Two draws every request, like draw()."""
        with self._lock:
            roll, by = self._wrong_random.random(), self._wrong_random.choice((-2, -1, 1, 2))
            return by if roll < self.wrong_rate else 0


class Metrics:
    """`http_requests_total` and `http_request_duration_seconds` in the Prometheus text format."""

    def __init__(self, deployment: str, variant: str, revision: str) -> None:
        self._lock = threading.Lock()
        self._base = {"deployment": deployment, "variant": variant}
        self._revision = revision
        # Series exist at 0 from the start: otherwise `sum(rate(...{code=~"5.."}))` of a version
        # that has never failed is an empty result rather than 0. Mirrored (shadow) requests are
        # labelled, so that they never count as user traffic where that matters.
        # Keyed (code, mirrored, cohort); a cohort's series start at 0 when its first request comes.
        self._requests: dict[tuple[str, str, str], int] = {
            (code, m, ""): 0 for code in ("200", "500") for m in ("false", "true")}
        self._notifications = {"sent": 0, "skipped_mirrored": 0}
        self._buckets = [0] * len(BUCKETS)
        self._count = 0
        self._sum = 0.0
        self._wrong = 0

    def observe_wrong(self) -> None:
        with self._lock:
            self._wrong += 1

    def notified(self, mirrored: bool) -> None:
        with self._lock:
            self._notifications["skipped_mirrored" if mirrored else "sent"] += 1

    def observe(self, code: int, seconds: float, mirrored: bool = False, cohort: str | None = None) -> None:
        key = (str(code), "true" if mirrored else "false", cohort or "")
        with self._lock:
            if cohort and key not in self._requests:
                for c in ("200", "500"):
                    for m in ("false", "true"):
                        self._requests.setdefault((c, m, cohort), 0)
            self._requests[key] = self._requests.get(key, 0) + 1
            self._count += 1
            self._sum += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self._buckets[i] += 1

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP demoapp_info Which version of the application this process is.",
                "# TYPE demoapp_info gauge",
                f"demoapp_info{_labels({**self._base, 'revision': self._revision})} 1",
                "# HELP http_requests_total Application requests answered, by status code.",
                "# TYPE http_requests_total counter",
            ]
            for (code, mirrored, cohort), n in sorted(self._requests.items()):
                labels = {**self._base, "code": code, "mirrored": mirrored, **({"cohort": cohort} if cohort else {})}
                lines.append(f"http_requests_total{_labels(labels)} {n}")
            lines += [
                "# HELP http_request_duration_seconds Time to answer an application request.",
                "# TYPE http_request_duration_seconds histogram",
            ]
            for bound, n in zip(BUCKETS, self._buckets):
                lines.append(f"http_request_duration_seconds_bucket{_labels({**self._base, 'le': repr(bound)})} {n}")
            lines.append(f"http_request_duration_seconds_bucket{_labels({**self._base, 'le': '+Inf'})} {self._count}")
            lines.append(f"http_request_duration_seconds_sum{_labels(self._base)} {self._sum!r}")
            lines.append(f"http_request_duration_seconds_count{_labels(self._base)} {self._count}")
            lines += [
                "# HELP demoapp_wrong_answers_total Answers made wrong on purpose (ground truth for tests;"
                " a real service cannot know this).",
                "# TYPE demoapp_wrong_answers_total counter",
                f"demoapp_wrong_answers_total{_labels(self._base)} {self._wrong}",
                "# HELP demoapp_notifications_total The follow-up each answer sends (a side effect in the world);"
                " skipped for mirrored requests, which must not act twice.",
                "# TYPE demoapp_notifications_total counter",
            ]
            lines += [f"demoapp_notifications_total{_labels({**self._base, 'outcome': outcome})} {n}"
                      for outcome, n in sorted(self._notifications.items())]
            return "\n".join(lines) + "\n"


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow in-flight request must not block shutdown

    def __init__(self, port: int, *, name: str, variant: str, revision: str, deployment: str,
                 behaviour: Behaviour, reporter: JudgeReporter | None = None, host: str = "127.0.0.1",
                 system_prompt: str = "", wrong_languages: frozenset[str] = frozenset()) -> None:
        super().__init__((host, port), _Handler)
        self.wrong_languages = wrong_languages
        self.name, self.variant, self.revision, self.deployment = name, variant, revision, deployment
        self.system_prompt, self.round_to = system_prompt, rounding_in(system_prompt)
        self.behaviour = behaviour
        self.metrics = Metrics(deployment, variant, revision)
        self.reporter = reporter
        self.draining = threading.Event()  # set on SIGTERM: /healthz fails, answers go on until shutdown

    def server_bind(self) -> None:
        # HTTPServer's own asks reverse DNS for the address's name (socket.getfqdn): a pod's IP has
        # none in the stack's network namespace, and the resolver's timeouts held each pod's
        # process 10 s before it could answer. The name is only ever used in CGI environments.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: DemoServer
    protocol_version = "HTTP/1.1"  # keep-alive, so a traffic driver need not reconnect every time

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        body = self._read_body()
        if url.path == "/answer":
            self._answer(url.query, body)
        elif url.path == "/metrics" and method == "GET":
            self._send(200, self.server.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif url.path == "/healthz" and method == "GET":
            if self.server.draining.is_set():
                self._send(503, b"draining\n", "text/plain")
            else:
                self._send(200, b"ok\n", "text/plain")
        elif url.path == "/admin/config":
            self._admin(method, body)
        else:
            self._json(404, {"error": f"no route for {method} {url.path}"})

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _answer(self, query: str, body: bytes) -> None:
        started = time.perf_counter()
        question = urllib.parse.parse_qs(query).get("q", [""])[0]
        if not question and body:
            try:
                question = str(json.loads(body).get("q", ""))
            except (ValueError, AttributeError):
                question = ""
        fail, delay = self.server.behaviour.draw()
        wrong_by = self.server.behaviour.draw_wrong()
        if language_of(self.headers.get("Accept-Language")) in self.server.wrong_languages:
            wrong_by = wrong_by or 1
        if delay:
            time.sleep(delay)
        srv = self.server
        # A mirrored copy (the shadow phase) is answered like any request, but its answer reaches no
        # user and it must not act in the world: no follow-up is sent for it.
        mirrored = is_mirrored(self.headers.get("Host"), self.headers)
        cohort = cohort_of(self.headers)
        request_id = self.headers.get("X-Request-Id") or None
        answer, correct = None, None
        if fail:
            code, payload = 500, {"error": "injected failure", "variant": srv.variant, "revision": srv.revision,
                                  "deployment": srv.deployment}
        else:
            answer, correct = answer_question(question, wrong_by, srv.round_to)
            code, payload = 200, {"answer": answer, "name": srv.name, "variant": srv.variant,
                                  "revision": srv.revision, "deployment": srv.deployment}
            if srv.system_prompt:
                payload["prompt"] = prompt_digest(srv.system_prompt)
            if mirrored:
                payload["mirrored"] = True
            if cohort:
                payload["cohort"] = cohort
        # Counted before the answer leaves, so a client that reads /metrics right after sees it.
        srv.metrics.observe(code, time.perf_counter() - started, mirrored, cohort)
        if code == 200:
            srv.metrics.notified(mirrored)
        if correct is False:
            srv.metrics.observe_wrong()
        self._json(code, payload)
        if answer is not None and question.strip() and srv.reporter is not None:
            # Queued only: the judge never slows an answer. The request id pairs this answer with the
            # other version's answer to the same request (the mirror carries the same id).
            srv.reporter.report(question, answer, request_id=request_id, segment=cohort, mirrored=mirrored)

    def _admin(self, method: str, body: bytes) -> None:
        behaviour = self.server.behaviour
        if method == "GET":
            self._json(200, behaviour.snapshot())
            return
        try:
            change = json.loads(body or b"{}")
            if not isinstance(change, dict) or set(change) - {"errorRate", "latencyMs", "wrongRate"}:
                raise ValueError('expected a JSON object with only "errorRate", "latencyMs" and/or "wrongRate"')
            self._json(200, behaviour.update(change.get("errorRate"), change.get("latencyMs"), change.get("wrongRate")))
        except (ValueError, TypeError) as exc:
            self._json(400, {"error": str(exc)})

    def _json(self, code: int, payload: dict) -> None:
        self._send(code, json.dumps(payload).encode() + b"\n", "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass  # one line per request would drown the log the tests keep


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m canarist.devstack.demoapp", description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="web")
    parser.add_argument("--variant", choices=VARIANTS, default="primary")
    parser.add_argument("--revision", default="v1")
    parser.add_argument("--deployment", help="`deployment` label; default <name>-primary or <name>, by variant")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (a pod's IP, for a pod's process)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="where to write the port bound")
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--wrong-rate", type=float, default=0.0,
                        help="share of answers that are plausible but wrong (still 200, same latency)")
    parser.add_argument("--seed", type=int, help="makes the sequence of injected failures reproducible")
    parser.add_argument("--judge-url", default=os.environ.get("CANARIST_JUDGE_URL") or None,
                        help="report every answer to this canarist judge (needs --release); default $CANARIST_JUDGE_URL")
    parser.add_argument("--release", default=os.environ.get("CANARIST_RELEASE") or None,
                        help="the CanaryRelease the answers belong to, namespace/name; default $CANARIST_RELEASE")
    parser.add_argument("--system-prompt", default=os.environ.get("SYSTEM_PROMPT", ""),
                        help="the stand-in model's system prompt (it follows \"round ... to the nearest ten\"); "
                             "default $SYSTEM_PROMPT, as a pod gets it from its ConfigMap")
    parser.add_argument("--wrong-languages", default=os.environ.get("WRONG_LANGUAGES", ""),
                        help="comma-separated languages (Accept-Language primary tags) whose every answer is wrong; "
                             "default $WRONG_LANGUAGES")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (our parent) is gone")
    parser.add_argument("--drain-seconds", type=float, default=0.0,
                        help="on SIGTERM, go on answering this long (health failing) before exiting, as a pod "
                             "does while its endpoint is taken out of the gateways")
    args = parser.parse_args(argv)

    if args.parent_pid and os.getppid() != args.parent_pid:
        parser.error(f"--parent-pid {args.parent_pid} is not our parent ({os.getppid()})")
    deployment = args.deployment or (f"{args.name}-primary" if args.variant == "primary" else args.name)
    try:
        behaviour = Behaviour(args.error_rate, args.latency_ms, args.seed, args.wrong_rate)
    except ValueError as exc:
        parser.error(str(exc))
    reporter = None
    if args.judge_url:
        if not args.release:
            parser.error("--judge-url needs --release (or $CANARIST_RELEASE)")
        try:
            reporter = JudgeReporter(args.judge_url, release=args.release, variant=args.variant,
                                     revision=args.revision)
        except ValueError as exc:
            parser.error(str(exc))
    server = DemoServer(args.port, name=args.name, variant=args.variant, revision=args.revision,
                        deployment=deployment, behaviour=behaviour, reporter=reporter, host=args.host,
                        system_prompt=args.system_prompt,
                        wrong_languages=frozenset(t.strip().lower() for t in args.wrong_languages.split(",") if t.strip()))
    if args.parent_pid:
        threading.Thread(target=exit_with_parent, args=(args.parent_pid,), daemon=True).start()

    def _shutdown(drain: float) -> None:
        if drain > 0:
            server.draining.set()
            time.sleep(drain)
        server.shutdown()

    def _terminate(signum, _frame) -> None:
        # shutdown() blocks until serve_forever returns, so it must not run on the serving thread.
        drain = args.drain_seconds if signum == signal.SIGTERM and not server.draining.is_set() else 0.0
        threading.Thread(target=_shutdown, args=(drain,), daemon=True).start()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    port = server.server_address[1]
    if args.port_file:
        write_port_file(args.port_file, port)
    print(f"demoapp {args.name} {args.variant} {args.revision} deployment={deployment} on {args.host}:{port}"
          + (f", reporting to {reporter.url} as {args.release}" if reporter else ""), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if reporter is not None:
            reporter.close(timeout=2.0)
            print(f"judge reporter: {reporter.stats}", flush=True)


# ---------------------------------------------------------------------------------------------
# Running it from tests


@dataclass(eq=False)
class DemoApp(LocalServerProcess):
    """A demoapp process started by `DemoApp.start`; `stop()` (or `with`) ends its process group."""

    name: str
    variant: str
    revision: str
    deployment: str
    port: int
    workdir: Path
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _owns_workdir: bool = field(default=True, repr=False)

    LOG = "demoapp.log"

    @classmethod
    def start(cls, name: str = "web", variant: str = "primary", revision: str = "v1", *,
              deployment: str | None = None, error_rate: float = 0.0, latency_ms: float = 0.0,
              seed: int | None = None, workdir: Path | None = None, timeout: float = 30.0,
              wrong_rate: float = 0.0, judge_url: str | None = None, release: str | None = None) -> "DemoApp":
        """Start one on a free port of 127.0.0.1 and return once it answers `/healthz`.

        `workdir` (created, and removed on stop) holds the port file and the log; pass one inside
        a stack's directory so the stack's leftover check also sees this process. With
        `judge_url` and `release` (namespace/name) it reports every answer to that judge.
        """
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if (judge_url is None) != (release is None):
            raise ValueError("judge_url and release go together")
        deployment = deployment or (f"{name}-primary" if variant == "primary" else name)
        workdir, owns = make_workdir(workdir, f"canarist-demoapp-{deployment}-")
        port_file = cls._fresh_port_file(workdir)
        argv = [
            sys.executable, "-m", "canarist.devstack.demoapp",
            "--name", name, "--variant", variant, "--revision", revision, "--deployment", deployment,
            "--port", "0", "--port-file", str(port_file),
            "--error-rate", repr(float(error_rate)), "--latency-ms", repr(float(latency_ms)),
            "--parent-pid", str(os.getpid()),
        ]
        if seed is not None:
            argv += ["--seed", str(seed)]
        if wrong_rate:
            argv += ["--wrong-rate", repr(float(wrong_rate))]
        if judge_url is not None or release is not None:
            argv += ["--judge-url", str(judge_url or ""), "--release", str(release or "")]
        app = cls(name, variant, revision, deployment, 0, workdir, start_process(argv, workdir / cls.LOG), owns)
        return app._until_ready(port_file, timeout)

    @property
    def _label(self) -> str:
        return f"demoapp {self.deployment}"

    @property
    def metrics_address(self) -> str:
        """host:port, as a Prometheus scrape target."""
        return f"127.0.0.1:{self.port}"

    def configure(self, error_rate: float | None = None, latency_ms: float | None = None,
                  wrong_rate: float | None = None) -> dict[str, float]:
        """Change the injected error rate, latency and/or wrong-answer rate now; returns the
        configuration in effect (`wrongRate` only when not 0)."""
        change = {k: v for k, v in (("errorRate", error_rate), ("latencyMs", latency_ms),
                                    ("wrongRate", wrong_rate)) if v is not None}
        code, body = self._call("POST", "/admin/config", json.dumps(change).encode())
        if code != 200:
            raise ValueError(f"{self._label} refused {change}: {body.decode(errors='replace')}")
        return json.loads(body)

    def ask(self, question: str = "ping") -> tuple[int, dict]:
        """One application request: (status code, JSON body)."""
        code, body = self._call("GET", "/answer?" + urllib.parse.urlencode({"q": question}))
        return code, json.loads(body)

    def metrics_text(self) -> str:
        code, body = self._call("GET", "/metrics")
        if code != 200:
            raise RuntimeError(f"{self._label} /metrics answered {code}")
        return body.decode()


if __name__ == "__main__":
    main()
