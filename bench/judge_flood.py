"""The judge under a flood: huge bodies and many small samples at once; its memory and verdicts.

    .venv/bin/python bench/judge_flood.py [--seconds 20] [--big-clients 8] [--big-mib 64] [--clients 4]
        [--judge-arg=--max-body-bytes=67108864 --judge-arg=--ingest-concurrency=1024]  # the old limits

Runs `canarist judge serve` (defaults: 4 MiB body limit, 8 bodies parsed at once) with a scripted
LLM. For `--seconds`, `--big-clients` threads post `--big-mib` MiB bodies over and over (each must
be refused with 413 without the judge holding it), `--clients` threads post batches of small
samples as fast as they can, and one thread asks for a verdict every 20 ms. Prints the judge's peak
resident memory (VmHWM, against the chart's 512 MiB limit), the verdict latency percentiles, and
what each kind of client got.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from canarist.devstack.judge_server import JudgeServer
from canarist.devstack.scripted_llm import ScriptedLLM

CHART_MEMORY_LIMIT_MIB = 512
RELEASE = "bench/flood"


def memory_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def big_client(port: int, body: bytes, deadline: float, outcomes: Counter) -> None:
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/v1/samples", body, {"Content-Type": "application/json"})
            outcomes[f"HTTP {conn.getresponse().status}"] += 1
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            # The judge answers 413 and closes while the rest of the body is still being sent.
            outcomes[f"closed early ({type(exc).__name__})"] += 1
        finally:
            conn.close()


def small_client(port: int, worker: int, deadline: float, outcomes: Counter, accepted: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    i = 0
    while time.monotonic() < deadline:
        samples = [{"release": RELEASE, "variant": "canary" if k % 2 else "primary",
                    "request": f"What is {worker} + {i + k}?", "response": f"{worker} + {i + k} = {worker + i + k}."}
                   for k in range(50)]
        conn.request("POST", "/v1/samples", json.dumps({"samples": samples}), {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        outcomes[f"HTTP {response.status}"] += 1
        if response.status == 202:
            accepted[worker] += len(samples)
        i += 50
    conn.close()


def verdicts(port: int, deadline: float, latencies: list[float], outcomes: Counter) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    path = f"/v1/verdict?release={RELEASE}&variant=canary&since=2020-01-01T00:00:00Z"
    while time.monotonic() < deadline:
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        outcomes[f"HTTP {response.status}"] += 1
        time.sleep(0.02)
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--big-clients", type=int, default=8)
    parser.add_argument("--big-mib", type=int, default=64)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--judge-arg", action="append", default=[],
                        help="an argument for the judge, e.g. --judge-arg=--max-body-bytes=67108864 (repeatable)")
    args = parser.parse_args()
    text = "x" * (64 * 1024 - 100)
    per_sample = len(json.dumps({"release": RELEASE, "variant": "canary", "request": text, "response": text}))
    count = max(1, args.big_mib * 1024 * 1024 // per_sample)
    big_body = json.dumps({"samples": [{"release": RELEASE, "variant": "canary", "request": text, "response": text}]
                           * count}).encode()

    with tempfile.TemporaryDirectory() as tmp, ScriptedLLM.start(workdir=Path(tmp) / "llm") as llm:
        judge = JudgeServer.start(Path(tmp) / "judge", llm.base_url, sample_rate=0.1, extra=tuple(args.judge_arg))
        pid = judge.proc.pid
        idle = memory_mib(pid, "VmRSS")
        big, small, asked = Counter(), Counter(), Counter()
        accepted, latencies, rss = [0] * args.clients, [], []
        deadline = time.monotonic() + args.seconds
        threads = [threading.Thread(target=big_client, args=(judge.port, big_body, deadline, big))
                   for _ in range(args.big_clients)]
        threads += [threading.Thread(target=small_client, args=(judge.port, w, deadline, small, accepted))
                    for w in range(args.clients)]
        threads.append(threading.Thread(target=verdicts, args=(judge.port, deadline, latencies, asked)))
        try:
            for t in threads:
                t.start()
            while time.monotonic() < deadline:
                rss.append(memory_mib(pid, "VmRSS"))
                time.sleep(0.05)
            for t in threads:
                t.join(120)
            peak = memory_mib(pid, "VmHWM")
        finally:
            judge.stop()
    latencies.sort()
    p = (lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1000)
    print(f"judge flood, {args.seconds:.0f}s: {args.big_clients} clients posting {len(big_body) / 2**20:.0f} MiB "
          f"bodies, {args.clients} posting batches of 50 small samples, one asking for verdicts every 20 ms")
    print(f"  memory           : idle {idle:.0f} MiB, peak {peak:.0f} MiB (VmHWM), median under flood "
          f"{statistics.median(rss):.0f} MiB; chart limit {CHART_MEMORY_LIMIT_MIB} MiB")
    print(f"  verdict latency  : p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {latencies[-1] * 1000:.1f} ms "
          f"over {len(latencies)} verdicts ({dict(asked)})")
    print(f"  huge bodies      : {dict(big)}")
    print(f"  small samples    : {sum(accepted):,} accepted ({sum(accepted) / args.seconds:,.0f}/s), {dict(small)}")
    return 0 if peak < CHART_MEMORY_LIMIT_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
