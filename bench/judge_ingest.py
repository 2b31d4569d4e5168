"""Judge ingest throughput: samples/s the judge service accepts with its process on one core.

    .venv/bin/python bench/judge_ingest.py [--seconds 10] [--batch 100] [--clients 4]

The judge runs as `canarist judge serve` pinned to CPU 0; the load generator runs on the other
CPU(s) with keep-alive connections posting batches of samples for `--seconds`. Sampling is on at
--sample-rate (default 0.1) against a scripted LLM, so scoring work competes for the same core,
as it would in production. Prints samples/s and request latency percentiles.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from canarist.devstack.judge_server import JudgeServer
from canarist.devstack.scripted_llm import ScriptedLLM


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` (asyncio's executor threads too) to `cpus`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def client(port: int, batch: int, deadline: float, worker: int, counts: list[int], latencies: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = 0
    while time.monotonic() < deadline:
        samples = [{"release": "bench/bot", "variant": "canary" if (i + k) % 2 else "primary",
                    "request": f"What is {worker} + {i + k}?", "response": f"{worker} + {i + k} = {worker + i + k}.",
                    "requestId": f"{worker}-{i + k}"} for k in range(batch)]
        body = json.dumps({"samples": samples})
        started = time.perf_counter()
        conn.request("POST", "/v1/samples", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        if response.status != 202:
            raise RuntimeError(f"ingest answered {response.status}")
        counts[worker] += batch
        i += batch
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--sample-rate", type=float, default=0.1)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs 2 CPUs: one for the judge, one for the load", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp, ScriptedLLM.start(workdir=Path(tmp) / "llm") as llm:
        judge = JudgeServer.start(Path(tmp) / "judge", llm.base_url, sample_rate=args.sample_rate)
        try:
            pin(judge.proc.pid, {cpus[0]})
            os.sched_setaffinity(0, set(cpus[1:]))
            counts, latencies = [0] * args.clients, []
            deadline = time.monotonic() + args.seconds
            threads = [threading.Thread(target=client, args=(judge.port, args.batch, deadline, w, counts, latencies))
                       for w in range(args.clients)]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(args.seconds + 60)
            elapsed = time.monotonic() - started
        finally:
            judge.stop()
    total = sum(counts)
    latencies.sort()
    print(f"judge ingest, judge process pinned to 1 CPU, sample rate {args.sample_rate}, "
          f"{args.clients} clients x batches of {args.batch}, {elapsed:.1f}s")
    print(f"  samples accepted : {total}")
    print(f"  throughput       : {total / elapsed:,.0f} samples/s ({len(latencies) / elapsed:,.1f} requests/s)")
    print(f"  request latency  : p50 {statistics.median(latencies) * 1000:.1f} ms, "
          f"p95 {latencies[int(len(latencies) * 0.95)] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
