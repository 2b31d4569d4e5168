"""`canarist judge serve` as a real process, scoring with the real LLMScorer against the scripted LLM process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from canarist.devstack.procs import pid_alive, start_process, stop_process_group, wait_until
from canarist.devstack.scripted_llm import ScriptedLLM

RELEASE = "prod/calc"
SECRET = "sk-canarist-test-0123456789abcdef"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


def canarist_argv() -> list[str]:
    script = Path(sys.executable).parent / "canarist"
    return [str(script)] if script.exists() else [sys.executable, "-m", "canarist.cli.main"]


def call(url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with _OPENER.open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def llm(tmp_path) -> Iterator[ScriptedLLM]:
    with ScriptedLLM.start(api_key=SECRET, workdir=tmp_path / "llm") as running:
        yield running


class JudgeProcess:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def get(self, path: str, **query) -> tuple[int, bytes]:
        return call(f"{self.url}{path}?{urllib.parse.urlencode(query)}" if query else self.url + path)


def start_judge(tmp_path: Path, llm: ScriptedLLM, *extra: str, name: str = "judge") -> JudgeProcess:
    port_file, log = tmp_path / f"{name}.port", tmp_path / f"{name}.log"
    argv = canarist_argv() + [
        "judge", "serve", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
        "--llm-base-url", llm.base_url, "--llm-model", "scripted-judge", "--timeout", "10", "--retries", "1",
        "--backoff", "0.05", "--log-level", "debug", *extra,
    ]
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "CANARIST_JUDGE_DB": str(tmp_path / "judge.db"),
           "CANARIST_JUDGE_SAMPLE_RATE": "1", "CANARIST_JUDGE_CONCURRENCY": "3"}
    proc = start_process(argv, log, env=env)
    try:
        port = wait_until(lambda: proc.poll() is None and port_file.exists() and int(port_file.read_text()), 30,
                          f"the judge to write its port file; log: {log}")
        judge = JudgeProcess(proc, f"http://127.0.0.1:{port}", log)
        wait_until(lambda: judge.get("/healthz")[0] == 200, 10, "the judge's /healthz")
    except BaseException:
        stop_process_group(proc.pid, grace=10)
        raise
    return judge


@pytest.fixture
def judge(tmp_path, llm) -> Iterator[JudgeProcess]:
    running = start_judge(tmp_path, llm)
    try:
        yield running
    finally:
        stop_process_group(running.proc.pid, grace=10)


def verdict(judge: JudgeProcess, variant: str, since: str) -> dict:
    code, body = judge.get("/v1/verdict", release=RELEASE, variant=variant, since=since)
    assert code == 200, body
    return json.loads(body)


def minute_ago() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))


def test_judge_process_scores_pairs_and_stops_cleanly(judge, llm, tmp_path):
    # Eleven sums. The primary is right except on the last; the canary is wrong on 6..9, right elsewhere.
    since = minute_ago()
    samples = []
    for i in range(11):
        a, b = 17 + i, 25 + 2 * i
        question = f"What is {a} + {b}?"
        primary = a + b + (1 if i == 10 else 0)
        canary = a + b + (3 if 6 <= i <= 9 else 0)
        samples.append({"release": RELEASE, "variant": "primary", "revision": "stable1", "request": question,
                        "response": f"The answer is {primary}.", "requestId": f"p{i}"})
        samples.append({"release": RELEASE, "variant": "canary", "revision": "new2", "request": f" {question}  ",
                        "response": f"{a} + {b} = {canary}", "requestId": f"c{i}"})
    code, body = call(judge.url + "/v1/samples", {"samples": samples})
    assert (code, json.loads(body)) == (202, {"accepted": 22, "sampled": 22})
    code, body = call(judge.url + "/v1/samples", {"samples": [{"release": RELEASE, "variant": "blue", "request": "q", "response": "a"}]})
    assert code == 400 and json.loads(body)["error"].startswith("samples[0].variant: ")

    def judged(variant: str) -> dict | None:
        v = verdict(judge, variant, since)
        done = v["pending"] == 0 and sum(v["pairwise"].values()) == 11
        return v if done else None

    canary = wait_until(lambda: judged("canary"), 60, "the canary's samples and pairs to be judged")
    primary = judged("primary")
    assert (canary["ingested"], canary["sampled"], canary["judged"], canary["errors"]) == (11, 11, 11, 0)
    assert canary["meanScore"] == pytest.approx((7 * 0.95 + 4 * 0.1) / 11)
    assert primary["meanScore"] == pytest.approx((10 * 0.95 + 1 * 0.1) / 11)
    assert canary["ci95"][0] < canary["meanScore"] < canary["ci95"][1]
    assert (canary["failed"], primary["failed"]) == (4, 1)
    # Equally right answers tie: the scripted model prefers whichever is shown first, and both orders are asked.
    assert canary["pairwise"] == {"wins": 1, "losses": 4, "ties": 6}
    assert primary["pairwise"] == {"wins": 4, "losses": 1, "ties": 6}
    assert canary["budget"]["tokensUsed"] > 0 and canary["budget"]["exhausted"] is False
    assert canary["sumScores"] == pytest.approx(7 * 0.95 + 4 * 0.1)
    assert canary["sumSquares"] == pytest.approx(7 * 0.95**2 + 4 * 0.1**2)
    assert llm.stats()["unauthorized"] == 0

    # The pair stream: all eleven, once each, in pages, with the same outcomes as the verdict's pairwise counts.
    stream, cursor = [], None
    while True:
        code, body = judge.get("/v1/pairs", release=RELEASE, limit=4, canaryRevision="new2", since=since,
                               **({"after": cursor} if cursor else {}))
        assert code == 200, body
        page = json.loads(body)
        stream += page["pairs"]
        cursor = page["cursor"]
        if not page["more"]:
            break
    assert len(stream) == 11 and len({p["fingerprint"] for p in stream}) == 11
    assert [p["id"] for p in stream] == sorted(p["id"] for p in stream)
    assert sorted(p["outcome"] for p in stream) == ["loss"] * 4 + ["tie"] * 6 + ["win"]
    assert json.loads(judge.get("/v1/pairs", release=RELEASE, canaryRevision="other")[1])["pairs"] == []

    code, body = judge.get("/v1/export", release=RELEASE, variant="canary")
    cases = [json.loads(line) for line in body.decode().splitlines()]
    assert code == 200 and sorted(c["requestId"] for c in cases) == ["c6", "c7", "c8", "c9"]
    assert all(c["otherResponse"].startswith("The answer is ") and c["score"] == pytest.approx(0.1) for c in cases)

    code, body = judge.get("/metrics")
    text = body.decode()
    assert code == 200
    assert re.search(r'canarist_judge_samples_ingested_total\{release="prod/calc",variant="canary"\} 11\.0', text)
    assert re.search(r'canarist_judge_samples_judged_total\{outcome="scored",release="prod/calc",variant="primary"\} 11\.0',
                     text)
    assert re.search(r'canarist_judge_judge_latency_seconds_count\{call="compare"\} 11\.0', text)
    assert re.search(r'canarist_judge_tokens_total\{release="prod/calc"\} [1-9]', text)
    assert "canarist_judge_queue_depth 0.0" in text

    # SIGTERM: a clean, quick exit that leaves no process behind, and the key is nowhere in the log.
    os.kill(judge.proc.pid, signal.SIGTERM)
    assert judge.proc.wait(timeout=15) == 0
    assert not pid_alive(judge.proc.pid)
    assert subprocess.run(["pgrep", "-g", str(judge.proc.pid)], capture_output=True).stdout == b""
    log = judge.log.read_text()
    assert "judge listening on 127.0.0.1:" in log and "judge stopped" in log
    assert SECRET not in log


def test_sigterm_during_llm_calls_exits_at_once_and_a_restart_resumes_the_work(tmp_path, llm):
    since = minute_ago()
    llm.configure(latency_ms=3000)  # every LLM call is still in flight when SIGTERM arrives
    first = start_judge(tmp_path, llm, "--shutdown-grace", "0.2", name="first")
    try:
        question = "What is 17 + 25?"
        code, _ = call(first.url + "/v1/samples", {"samples": [
            {"release": RELEASE, "variant": "primary", "request": question, "response": "It is 42."},
            {"release": RELEASE, "variant": "canary", "request": question, "response": "It is 43."}]})
        assert code == 202
        wait_until(lambda: llm.stats()["requests"] >= 3, 10, "the judge's LLM calls to start")
        code, body = first.get("/v1/pairs", release=RELEASE)
        assert code == 200 and json.loads(body)["pairs"] == [], "nothing is complete yet"
        cursor = json.loads(body)["cursor"]
        started = time.monotonic()
        os.kill(first.proc.pid, signal.SIGTERM)
        assert first.proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 2, "SIGTERM does not wait for the slow LLM calls"
    finally:
        stop_process_group(first.proc.pid, grace=5)

    llm.reset()
    second = start_judge(tmp_path, llm, name="second")
    try:
        assert "resuming 2 pending samples and 1 pending pairs" in second.log.read_text()
        canary = wait_until(lambda: (v := verdict(second, "canary", since))["pending"] == 0
                            and sum(v["pairwise"].values()) == 1 and v, 30, "the resumed work")
        assert (canary["judged"], canary["meanScore"], canary["pairwise"]["losses"]) == (1, pytest.approx(0.1), 1)
        assert verdict(second, "primary", since)["meanScore"] == pytest.approx(0.95)
        code, body = second.get("/v1/pairs", release=RELEASE, after=cursor)
        assert code == 200, body
        resumed = json.loads(body)["pairs"]
        assert [(p["primaryScore"], p["canaryScore"], p["outcome"]) for p in resumed] == \
            [(pytest.approx(0.95), pytest.approx(0.1), "loss")], "the first process's cursor is good after a restart"
    finally:
        stop_process_group(second.proc.pid, grace=10)
    assert SECRET not in (tmp_path / "first.log").read_text() + (tmp_path / "second.log").read_text()


def test_bad_configuration_exits_2_naming_the_setting(tmp_path):
    env = {**os.environ, "CANARIST_JUDGE_SAMPLE_RATE": "lots"}
    out = subprocess.run(canarist_argv() + ["judge", "serve", "--db", str(tmp_path / "x.db")],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 2 and "CANARIST_JUDGE_SAMPLE_RATE: must be a number" in out.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANARIST_JUDGE_")}
    out = subprocess.run(canarist_argv() + ["judge", "serve", "--db", str(tmp_path / "x.db"), "--llm-model", "m"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 2 and "--llm-base-url (or CANARIST_JUDGE_LLM_BASE_URL) is required" in out.stderr
    assert not (tmp_path / "x.db").exists(), "nothing is created before the configuration is known good"
