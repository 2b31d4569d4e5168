"""End-to-end judge latency per sample: from ingest until the sample's score is stored.

    .venv/bin/python bench/judge_latency.py [--samples 200] [--rate 20] [--llm-latency-ms 0 200]

Samples are posted one at a time at `--rate` per second (sample rate 1.0) to `canarist judge
serve`, whose LLM is the scripted OpenAI-compatible server with the given added latency (0 shows
the judge's own overhead; 200 ms is closer to a hosted model). Per-sample latency is read from
the judge's SQLite file afterwards (ingested_at -> finished_at, microseconds).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from canarist.devstack.judge_server import JudgeServer
from canarist.devstack.procs import wait_until
from canarist.devstack.scripted_llm import ScriptedLLM


def run(samples: int, rate: float, llm_latency_ms: float, concurrency: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp, ScriptedLLM.start(workdir=Path(tmp) / "llm",
                                                                 latency_ms=llm_latency_ms) as llm:
        judge = JudgeServer.start(Path(tmp) / "judge", llm.base_url, sample_rate=1.0,
                                  extra=("--concurrency", str(concurrency)))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", judge.port, timeout=30)
            start = time.monotonic()
            for i in range(samples):
                time.sleep(max(0.0, start + i / rate - time.monotonic()))
                body = json.dumps({"release": "bench/bot", "variant": "canary", "request": f"What is {i} + 7?",
                                   "response": f"{i} + 7 = {i + 7}."})
                conn.request("POST", "/v1/samples", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
            conn.close()

            def all_judged() -> bool:
                url = f"{judge.url}/v1/verdict?release=bench/bot&variant=canary&since=1970-01-01T00:00:00Z"
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=10) as r:
                    verdict = json.load(r)
                return verdict["judged"] + verdict["errors"] >= samples

            wait_until(all_judged, 300, "every sample to be judged", interval=0.1)
            db = sqlite3.connect(f"file:{judge.workdir / 'judge.db'}?mode=ro", uri=True)
            rows = db.execute("SELECT (finished_at - ingested_at) / 1e6 FROM samples WHERE status = 'scored'").fetchall()
            db.close()
        finally:
            judge.stop()
    return sorted(r[0] for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="samples posted per second")
    parser.add_argument("--concurrency", type=int, default=4, help="the judge's concurrent LLM calls")
    parser.add_argument("--llm-latency-ms", type=float, nargs="+", default=[0.0, 200.0])
    args = parser.parse_args()
    print(f"judge end-to-end latency per sample (ingest -> score stored), {args.samples} samples at "
          f"{args.rate:g}/s, judge concurrency {args.concurrency}")
    for latency in args.llm_latency_ms:
        values = run(args.samples, args.rate, latency, args.concurrency)
        p = lambda q: values[min(len(values) - 1, int(len(values) * q))] * 1000  # noqa: E731
        print(f"  LLM +{latency:>5.0f} ms : scored {len(values)}/{args.samples}, p50 {p(0.5):7.1f} ms, "
              f"p95 {p(0.95):7.1f} ms, max {values[-1] * 1000:7.1f} ms, mean {statistics.mean(values) * 1000:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
