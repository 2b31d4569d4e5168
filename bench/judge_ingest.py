"""Judge ingest throughput: samples/s the judge service accepts with its process on one core.

    .venv/bin/python bench/judge_ingest.py [--seconds 10] [--batch 100] [--clients 4] [--auth]

The judge runs as `canarist judge serve` pinned to CPU 0; the load generator runs on the other
CPU(s) with keep-alive connections posting batches of samples for `--seconds`. Sampling is on at
--sample-rate (default 0.1) against a scripted LLM, so scoring work competes for the same core,
as it would in production. Prints samples/s and request latency percentiles.

With --auth the judge runs with `--auth kubernetes` against a local cluster's real TokenReview
(started for the run, about a minute): each client posts with a ServiceAccount token of the
release's namespace, as a pod with a projected token would.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from contextlib import ExitStack

from canarist.devstack.judge_server import JudgeServer
from canarist.devstack.scripted_llm import ScriptedLLM


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` (asyncio's executor threads too) to `cpus`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def client(port: int, batch: int, deadline: float, worker: int, counts: list[int], latencies: list[float],
           token: str | None) -> None:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = 0
    while time.monotonic() < deadline:
        samples = [{"release": "bench/bot", "variant": "canary" if (i + k) % 2 else "primary",
                    "request": f"What is {worker} + {i + k}?", "response": f"{worker} + {i + k} = {worker + i + k}.",
                    "requestId": f"{worker}-{i + k}"} for k in range(batch)]
        body = json.dumps({"samples": samples})
        started = time.perf_counter()
        conn.request("POST", "/v1/samples", body, headers)
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        if response.status != 202:
            raise RuntimeError(f"ingest answered {response.status}")
        counts[worker] += batch
        i += batch
    conn.close()


@contextmanager
def authentication(workdir: Path) -> Iterator[tuple[tuple[str, ...], str]]:
    """A local cluster; the judge's flags for TokenReview there, and a token of namespace bench."""
    import kubernetes

    from canarist.devstack.chart import serviceaccount_kubeconfig, serviceaccount_token
    from canarist.devstack.identities import create_service_accounts, grant_token_review
    from canarist.devstack.stack import LocalStack

    with LocalStack("canarist-bench", workdir / "stack", nodes=1, data_plane=False) as stack:
        api = kubernetes.config.new_client_from_config(config_file=str(stack.kubeconfig))
        for namespace in ("bench", "canarist"):
            kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        create_service_accounts(api, {"bot": "bench", "judge": "canarist"})
        grant_token_review(api, "canarist", "judge")
        kubeconfig = serviceaccount_kubeconfig(stack, "canarist", "judge", "bench-judge")
        yield ("--auth", "kubernetes", "--kubeconfig", str(kubeconfig)), \
            serviceaccount_token(stack, "bench", "bot", audience="canarist-judge")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--sample-rate", type=float, default=0.1)
    parser.add_argument("--auth", action="store_true", help="authentication on, against a local cluster's TokenReview")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs 2 CPUs: one for the judge, one for the load", file=sys.stderr)
        return 1
    with ExitStack() as resources:
        tmp = resources.enter_context(tempfile.TemporaryDirectory())
        llm = resources.enter_context(ScriptedLLM.start(workdir=Path(tmp) / "llm"))
        extra, token = resources.enter_context(authentication(Path(tmp))) if args.auth else ((), None)
        judge = JudgeServer.start(Path(tmp) / "judge", llm.base_url, sample_rate=args.sample_rate, extra=extra)
        try:
            pin(judge.proc.pid, {cpus[0]})
            os.sched_setaffinity(0, set(cpus[1:]))
            counts, latencies = [0] * args.clients, []
            deadline = time.monotonic() + args.seconds
            threads = [threading.Thread(target=client, args=(judge.port, args.batch, deadline, w, counts, latencies,
                                                             token))
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
          f"authentication {'on (TokenReview)' if args.auth else 'off'}, "
          f"{args.clients} clients x batches of {args.batch}, {elapsed:.1f}s")
    print(f"  samples accepted : {total}")
    print(f"  throughput       : {total / elapsed:,.0f} samples/s ({len(latencies) / elapsed:,.1f} requests/s)")
    print(f"  request latency  : p50 {statistics.median(latencies) * 1000:.1f} ms, "
          f"p95 {latencies[int(len(latencies) * 0.95)] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
