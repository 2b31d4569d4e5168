"""Scale: one operator process against N CanaryReleases on the local stack (issue 15).

    hack/in-netns.sh .venv/bin/python bench/scale.py [--releases 100,300,1000] [--interval 30]
        [--seconds 150] [--rolling 5] [--tick-seconds S] [--quick]

For each N a fresh local stack (kwok nodes, enough of them for 2N + K pods; no data plane: no pod
is a process and no Traefik runs, nothing here needs them), the CRD and the Helm chart (the
operator's ServiceAccount and RBAC), N Deployments (1 replica, kwok pods) and N CanaryReleases in
one namespace; then one operator process, `kopf run -m canarist.handlers` with the chart's
ServiceAccount, as users run it: its tick is the operator's default (CANARIST_TICK_SECONDS = 5 s,
one global timer per release) unless --tick-seconds says otherwise; `--interval` is the releases'
`analysis.interval`, which today only spaces the checks of a release that is rolling out.

Once every release is Idle (primary, Services and HTTPRoute made, the target scaled to zero), K of
them (`--rolling`) get a new image and walk the steps with one Prometheus gate,
`vector(time() >= bool T)` with `max: 0.5` and `failureLimit: 0`: it passes until T (1.5 intervals
after the rollout starts) and fails from then on, so the first check after T rolls back. Over the
next `--seconds` it measures:

- operator CPU (cores): utime + stime of the operator process and any descendants, from
  /proc/<pid>/stat at the window's start and end, over the window's wall time;
- peak RSS: VmHWM from /proc/<pid>/status (the whole run, set-up included) at the window's end;
- API requests/s: `apiserver_request_total` from kube-apiserver's own /metrics, summed over every
  label, scraped at the window's start and end. The metric names no user and the stack runs with
  API Priority and Fairness off (kwokctl's disableQPSLimits), so there is no per-flow count
  either: the operator's share is the window's rate minus a baseline, the same counter over
  `--baseline` s with the operator not running, once before it starts (all objects created) and
  once after it stops; their mean is subtracted. The top (verb, resource) pairs of the
  difference are printed: what the operator's requests are.
- tick lag (due -> done): kopf runs a non-sharp timer again `tick` seconds after the previous run
  ended, so a run is due at the previous end + tick and `done` is when kopf logs
  "Timer 'tick' succeeded." for that release (the operator's log, INFO is kopf's default). The lag
  of a run is end - previous end - tick; a release whose next run is overdue at the window's end
  counts with its lag so far. `tick_lags()` picks the source: when CANARIST_METRICS_PORT is set
  and the operator's /metrics there has a `canarist_tick_lag_seconds` histogram (a later change),
  its bucket counts over the window are used instead of the log.
- rollback reaction, for the K rolling releases: an HTTPRoute watch (one request) records when each
  route's weights return to 100 % primary; printed from the gate's onset T (what
  the target `interval + 2 s` is about: at worst a whole interval until the next check) and from
  the violating check itself (`status.lastCheckAt` of the rolled-back release, the tick's time).

Targets (issue 15, 1,000 releases at a 30 s interval): <= 1 core, <= 512 MiB, <= 50 API requests/s
in steady state, tick lag p99 <= 2 s, rollback reaction p99 <= interval + 2 s. Figures measured
before any optimisation are in TODAY below and printed first; bench/README.md has the commands.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import kubernetes
import kubernetes.watch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.e2e.harness: the e2e tests' Deployment manifest

from canarist.api.crd import GROUP, PLURAL, VERSION  # noqa: E402
from canarist.devstack.chart import CHART, CRD_NAME, crd_installed, helm, operator_kubeconfig  # noqa: E402
from canarist.devstack.cluster import nodes_for  # noqa: E402
from canarist.devstack.gateway import GATEWAY_NAME, GATEWAY_NAMESPACE  # noqa: E402
from canarist.devstack.operator_process import OperatorProcess  # noqa: E402
from canarist.devstack.procs import wait_until  # noqa: E402
from canarist.devstack.stack import LocalStack  # noqa: E402
from canarist.kube.workloads import canary_service_name  # noqa: E402
from tests.e2e.harness import deployment  # noqa: E402

NAMESPACE = "scale"
OPERATOR_DEFAULT_TICK = 5.0  # canarist.handlers.canaryrelease.TICK_SECONDS when CANARIST_TICK_SECONDS is unset
NEVER = 4102444800  # 2100-01-01: the idle releases' gate never turns
TARGETS = {"cpu": 1.0, "rss": 512.0, "rps": 50.0, "lag": 2.0, "reaction": 2.0}  # reaction: interval + 2 s

# Measured before any optimisation (bench/README.md, "scale"): N -> figures. Printed first.
TODAY: dict[int, dict[str, str]] = {  # commit fa35cc4, 5 s tick, 30 s interval, 90 s window, 2 busy cores
    100: {"CPU": "0.26 cores", "peak RSS": "146 MiB", "API": "198.8 req/s", "tick lag p50/p99": "0.09/0.42 s",
          "rollback reaction p99": "25.7 s"},
    300: {"CPU": "0.56 cores", "peak RSS": "247 MiB", "API": "468.6 req/s", "tick lag p50/p99": "1.30/38.9 s",
          "rollback reaction p99": "31.6 s"},
    1000: {"result": "not all 1,000 releases Idle 360 s after the operator started"},
}
ISSUE_FIGURES = "issue 15, idle releases, 5 s tick: 100 -> 141 requests/s, 0.31 cores; 300 -> 353 requests/s, 0.45 cores"


# -- the objects ----------------------------------------------------------------------------------

def release_name(i: int) -> str:
    return f"r{i:04d}"


def gate_query(violate_at: float) -> str:
    """0 before `violate_at` (unix time), 1 from then on: a gate with max 0.5 fails from that moment."""
    return f"vector(time() >= bool {violate_at:.0f})"


def release_manifest(name: str, interval: int, violate_at: float = NEVER) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CanaryRelease", "metadata": {"name": name},
        "spec": {
            "targetRef": {"name": name},
            "service": {"port": 8080},
            "routing": {"gatewayAPI": {"parentRefs": [{"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}],
                                       "hostnames": [f"{name}.scale.test"]}},
            "analysis": {"interval": f"{interval}s", "failureLimit": 0,
                         "metrics": [{"name": "bench-gate", "prometheus": {"query": gate_query(violate_at)},
                                      "max": 0.5}]},
        },
    }


def export_source(rev: str, into: Path) -> Path:
    """The operator, chart and CRD as they are at git revision `rev`, exported under `into` (the
    working tree may hold someone's unfinished change: a baseline is measured on a commit)."""
    import subprocess

    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "operator/canarist", "charts/canarist", "crds"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def create_objects(stack: LocalStack, n: int, interval: int, chunk: int = 200) -> None:
    docs = []
    for i in range(n):
        name = release_name(i)
        docs.append({"apiVersion": "apps/v1", "kind": "Deployment",
                     **deployment(name, "registry.test/app:v1", replicas=1)})
        docs.append(release_manifest(name, interval))
    for start in range(0, len(docs), chunk):
        stack.cluster.kubectl("create", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump_all(docs[start:start + chunk]))


# -- what is measured -----------------------------------------------------------------------------

def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
            children[int(fields[1])].append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime (+ reaped children's) of `pid` and its live descendants."""
    total = 0
    for p in _descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int, field: str = "VmHWM") -> float:
    """The process tree's peak RSS (VmHWM), or its RSS now (field="VmRSS")."""
    total = 0
    for p in _descendants(pid):
        try:
            found = re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        except OSError:
            continue
        total += int(found.group(1)) if found else 0
    return total / 1024


_REQUEST = re.compile(r'^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$', re.M)


def api_requests(stack: LocalStack) -> Counter:
    """kube-apiserver's apiserver_request_total by (verb, resource), read from its /metrics."""
    text = stack.cluster.kubectl("get", "--raw", "/metrics").stdout
    counts: Counter = Counter()
    for labels, value in _REQUEST.findall(text):
        parts = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        key = (parts.get("verb", "?"), parts.get("resource", "?") + (f"/{parts['subresource']}"
                                                                     if parts.get("subresource") else ""))
        counts[key] += float(value)
    return counts


def request_rate(before: Counter, after: Counter, seconds: float) -> Counter:
    return Counter({k: (after[k] - before[k]) / seconds for k in after})


def baseline_rate(stack: LocalStack, seconds: float) -> Counter:
    before = api_requests(stack)
    started = time.monotonic()
    time.sleep(seconds)  # the operator is not running: the rest of the cluster's own request rate
    return request_rate(before, api_requests(stack), time.monotonic() - started)


_TICK_DONE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] kopf\.objects\s+\[INFO\s*\] "
                        r"\[([^/\]]+)/([^\]]+)\] Timer 'tick' succeeded\.", re.M)


def tick_ends(log: str) -> dict[str, list[float]]:
    """Unix times at which each release's tick ended, from kopf's log lines (local time, ms)."""
    ends: dict[str, list[float]] = defaultdict(list)
    for stamp, _, name in _TICK_DONE.findall(log):
        ends[name].append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return ends


def lags_from_log(log_path: Path, start: float, end: float, tick: float, names: list[str]) -> list[float]:
    """Due -> done of every tick that ended in [start, end], plus each overdue tick at `end`."""
    ends = tick_ends(log_path.read_text(errors="replace"))
    lags = []
    for name in names:
        times = ends.get(name, [])
        lags += [b - a - tick for a, b in zip(times, times[1:]) if start <= b <= end]
        last = max((t for t in times if t <= end), default=None)
        if last is None or end - last - tick > 0:
            lags.append(end - (last if last is not None else start) - tick)
    return lags


def histogram(text: str, metric: str) -> dict[float, float]:
    buckets: dict[float, float] = defaultdict(float)
    for le, value in re.findall(rf'^{metric}_bucket\{{[^}}]*le="([^"]+)"[^}}]*\}} ([0-9.e+]+)$', text, re.M):
        buckets[float(le)] += float(value)
    return buckets


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over the increase between two scrapes (linear within a bucket)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank, lower, below = q * counts[-1], 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


def overdue_ticks(port: int) -> float | None:
    found = re.search(r"^canarist_ticks_overdue ([0-9.e+]+)$", metrics_text(port), re.M)
    return float(found.group(1)) if found else None


def wait_settled(port: int, timeout: float, reads: int = 3, every: float = 2.0) -> str:
    """Until the operator's tick backlog (canarist_ticks_overdue) reads 0 `reads` times in a row."""
    deadline, zeros, highest = time.monotonic() + timeout, 0, 0.0
    while zeros < reads:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the operator's tick backlog did not reach 0 within {timeout:.0f}s")
        backlog = overdue_ticks(port)
        if backlog is None:
            return "this operator has no canarist_ticks_overdue: not waited for"
        highest = max(highest, backlog)
        zeros = zeros + 1 if backlog == 0 else 0
        time.sleep(every)
    return f"backlog at most {highest:.0f} once Idle"


@dataclass
class TickLagSource:
    """Where tick lag comes from; `begin()` at the window's start, `quantiles()` at its end. The
    operator's own histogram (CANARIST_METRICS_PORT, canarist_tick_lag_seconds) when it has one,
    else its log."""

    log_path: Path
    tick: float
    names: list[str]
    metrics_port: int | None = None
    _start: float = 0.0
    _before: dict[float, float] | None = None
    source: str = "operator log"
    from_log: tuple[float | None, float | None] = (None, None)

    def begin(self) -> None:
        self._start = time.time()
        if self.metrics_port:
            try:
                self._before = histogram(metrics_text(self.metrics_port), "canarist_tick_lag_seconds")
            except OSError:
                self._before = None

    def quantiles(self) -> tuple[float | None, float | None]:
        lags = lags_from_log(self.log_path, self._start, time.time(), self.tick, self.names)
        self.from_log = (percentile(lags, 50), percentile(lags, 99))
        if self._before:  # an operator that has the histogram but observed nothing in the window: the log
            after = histogram(metrics_text(self.metrics_port), "canarist_tick_lag_seconds")
            p50, p99 = histogram_quantile(0.5, self._before, after), histogram_quantile(0.99, self._before, after)
            if p99 is not None:
                self.source = "operator /metrics canarist_tick_lag_seconds"
                return p50, p99
        return self.from_log


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


@dataclass
class RouteWatch:
    """One watch on the namespace's HTTPRoutes: when each watched route's weights change."""

    api: kubernetes.client.ApiClient
    names: set[str]
    changes: dict[str, list[tuple[float, tuple[int, int]]]] = field(default_factory=lambda: defaultdict(list))
    _watch: kubernetes.watch.Watch = field(default_factory=kubernetes.watch.Watch)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "RouteWatch":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._watch.stop()

    def _run(self) -> None:
        custom = kubernetes.client.CustomObjectsApi(self.api)
        try:
            for event in self._watch.stream(custom.list_namespaced_custom_object, "gateway.networking.k8s.io", "v1",
                                            NAMESPACE, "httproutes", timeout_seconds=3600):
                route, seen = event["object"], time.time()
                name = route["metadata"]["name"]
                if name not in self.names:
                    continue
                refs = {r["name"]: r.get("weight", 1) for r in route["spec"]["rules"][-1]["backendRefs"]}
                weights = (refs.get(f"{name}-primary", 0), refs.get(canary_service_name(name), 0))
                if not self.changes[name] or self.changes[name][-1][1] != weights:
                    self.changes[name].append((seen, weights))
        except Exception:  # noqa: BLE001 - the stack is going away
            pass

    def back_on_primary(self, name: str) -> float | None:
        """When the route last went to 100 % primary after the canary had weight."""
        changes, had_canary = self.changes.get(name, []), False
        for at, (_, canary) in changes:
            had_canary = had_canary or canary > 0
            if had_canary and canary == 0:
                return at
        return None


# -- one N ----------------------------------------------------------------------------------------

@dataclass
class Figures:
    n: int
    cpu: float | None = None
    rss: float | None = None
    rps: float | None = None
    lag: tuple[float | None, float | None] = (None, None)
    reaction: list[float] = field(default_factory=list)      # onset -> route 100 % primary
    check_to_route: list[float] = field(default_factory=list)
    not_rolled_back: int = 0
    notes: list[str] = field(default_factory=list)
    top: list[tuple[tuple[str, str], float]] = field(default_factory=list)


def phases(custom: kubernetes.client.CustomObjectsApi) -> Counter:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]
    return Counter((i.get("status") or {}).get("phase") or "-" for i in items)


def run_one(n: int, args: argparse.Namespace, workdir: Path) -> Figures:
    figures, rolling = Figures(n), min(args.rolling, n)
    tick = args.tick_seconds or OPERATOR_DEFAULT_TICK
    log = print if args.verbose else (lambda *a, **k: None)
    nodes = nodes_for(2 * n + rolling + 10) + 1  # target and primary both run while a release initialises
    stamp = time.monotonic()
    with LocalStack(f"scale-{os.getpid()}-{n}", workdir / f"stack-{n}", nodes=nodes, data_plane=False) as stack:
        log(f"[N={n}] stack up with {nodes} nodes in {time.monotonic() - stamp:.0f}s")
        source = export_source(args.operator_source, workdir / "source") if args.operator_source else ROOT
        stack.cluster.kubectl("apply", "--server-side", "-f", str(source / "crds" / "canarist.dev_canaryreleases.yaml"))
        stack.cluster.wait_established(CRD_NAME)
        stack.cluster.kubectl("create", "namespace", NAMESPACE)
        chart = source / CHART.relative_to(ROOT)
        helm(stack, "install", "canarist", str(chart), "--namespace", NAMESPACE,
             *(["--skip-crds"] if crd_installed(stack) else []),
             "--set", f"watchNamespaces={{{NAMESPACE}}}", "--set", "judge.enabled=false")
        api = kubernetes.config.new_client_from_config(config_file=str(stack.kubeconfig))
        custom, apps = kubernetes.client.CustomObjectsApi(api), kubernetes.client.AppsV1Api(api)
        stamp = time.monotonic()
        create_objects(stack, n, args.interval)
        log(f"[N={n}] {n} Deployments and CanaryReleases created in {time.monotonic() - stamp:.0f}s")
        base_before = baseline_rate(stack, args.baseline)

        env = {"PYTHONPATH": str(source / "operator")} if args.operator_source else {}
        port = os.environ.get("CANARIST_METRICS_PORT")
        if port:
            env["CANARIST_METRICS_PORT"] = port
        operator = OperatorProcess(operator_kubeconfig(stack, NAMESPACE, "canarist"), NAMESPACE,
                                   stack.prometheus.url, workdir / f"operator-{n}.log", tick_seconds=tick,
                                   env=env)
        names = [release_name(i) for i in range(n)]
        rolling_names = names[:: max(1, n // rolling)][:rolling] if rolling else []
        try:
            operator.start()
            stamp = time.monotonic()
            try:
                wait_until(lambda: phases(custom).get("Idle", 0) == n, args.setup_timeout,
                           f"all {n} releases Idle", interval=3)
            except TimeoutError as exc:  # how far it got is the figure
                ends = tick_ends(operator.log_path.read_text(errors="replace"))
                raise TimeoutError(f"{exc}; phases {dict(phases(custom))}, {sum(map(len, ends.values()))} ticks "
                                   f"done for {len(ends)} releases") from None
            log(f"[N={n}] all Idle {time.monotonic() - stamp:.0f}s after the operator started")
            if port:
                # Idle is written a tick before the workers are done with start-up (the tick after a
                # transition, the canaries' scale-down events): the window is a steady state only
                # once the backlog is gone.
                settled = wait_settled(int(port), args.setup_timeout)
                log(f"[N={n}] tick backlog 0 {time.monotonic() - stamp:.0f}s after the operator started")
                figures.notes.append(f"{n}: start-up: all Idle, then no tick overdue, {time.monotonic() - stamp:.0f}s "
                                     f"after the operator started ({settled})")
            service = stack.cluster.kubectl("get", "service", "-n", NAMESPACE, f"{names[-1]}-primary", "-o",
                                            "jsonpath={.spec.clusterIP}").stdout
            figures.notes.append(f"{n}: ClusterIP of the last primary Service {service}, {nodes} nodes")

            lags = TickLagSource(operator.log_path, tick, names, int(port) if port else None)
            with RouteWatch(api, set(rolling_names)) as routes:
                time.sleep(1)  # the watch's initial list is in
                violate_at = time.time() + 1.5 * args.interval
                for name in rolling_names:  # the gate turns at violate_at; the new image starts a rollout
                    custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name, {
                        "spec": {"analysis": {"metrics": [{"name": "bench-gate", "max": 0.5,
                                                           "prometheus": {"query": gate_query(violate_at)}}]}}})
                    apps.patch_namespaced_deployment(name, NAMESPACE, {"spec": {"template": {"spec": {
                        "containers": [{"name": "app", "image": "registry.test/app:v2"}]}}}})
                cpu_before, requests_before = cpu_seconds(operator.proc.pid), api_requests(stack)
                lags.begin()
                started = time.monotonic()
                time.sleep(args.seconds)
                requests_after, cpu_after = api_requests(stack), cpu_seconds(operator.proc.pid)
                elapsed = time.monotonic() - started
                figures.lag = lags.quantiles()
                # kopf timer log lines are the only source for operators before issue 15's scheduler.
                from_log = ("" if "metrics" in lags.source else
                            f"; from the log p50/p99 {_fmt(lags.from_log[0], ' s')} / {_fmt(lags.from_log[1], ' s')}")
                figures.notes.append(f"{n}: tick lag from the {lags.source}{from_log}")
                figures.rss = peak_rss_mib(operator.proc.pid)
                figures.notes.append(f"{n}: RSS at the window's end {peak_rss_mib(operator.proc.pid, 'VmRSS'):.0f} MiB "
                                     f"(the peak is start-up's)")
                # Rollbacks still to come are waited for (outside the window), up to 3 intervals.
                deadline = time.monotonic() + 3 * args.interval
                while time.monotonic() < deadline and any(routes.back_on_primary(r) is None for r in rolling_names):
                    time.sleep(1)
            figures.cpu = (cpu_after - cpu_before) / elapsed
            window = request_rate(requests_before, requests_after, elapsed)
            for name in rolling_names:
                back = routes.back_on_primary(name)
                status = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name).get("status") or {}
                if back is None or status.get("phase") != "RolledBack":
                    figures.not_rolled_back += 1
                    figures.notes.append(f"{name}: not rolled back (phase {status.get('phase')}, "
                                         f"route {routes.changes.get(name, [])[-1:]})")
                    continue
                figures.reaction.append(back - violate_at)
                check_at = datetime.fromisoformat(status["lastCheckAt"].replace("Z", "+00:00")).timestamp()
                figures.check_to_route.append(back - check_at)
        finally:
            operator.stop()
        base_after = baseline_rate(stack, args.baseline)
        baseline = Counter({k: (base_before[k] + base_after[k]) / 2 for k in set(base_before) | set(base_after)})
        figures.rps = sum(window.values()) - sum(baseline.values())
        figures.notes.append(f"{n}: apiserver {sum(window.values()):.1f} req/s in the window, baseline "
                             f"{sum(base_before.values()):.1f} before / {sum(base_after.values()):.1f} after")
        own = Counter({k: window[k] - baseline[k] for k in window})
        figures.top = [(k, v) for k, v in own.most_common(8) if v > 0.05]
    return figures


# -- printing -------------------------------------------------------------------------------------

def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def report(f: Figures, args: argparse.Namespace) -> str:
    tick = args.tick_seconds or OPERATOR_DEFAULT_TICK
    reaction_target = args.interval + TARGETS["reaction"]
    rows = [
        ("operator CPU", _fmt(f.cpu, " cores"), f"<= {TARGETS['cpu']:g} core"),
        ("peak RSS", _fmt(f.rss, " MiB", 0), f"<= {TARGETS['rss']:g} MiB"),
        ("API requests/s (operator)", _fmt(f.rps, "", 1), f"<= {TARGETS['rps']:g}"),
        ("tick lag p50", _fmt(f.lag[0], " s"), ""),
        ("tick lag p99", _fmt(f.lag[1], " s"), f"<= {TARGETS['lag']:g} s"),
        ("rollback reaction p50 (gate turns -> 100% primary)", _fmt(percentile(f.reaction, 50), " s"), ""),
        ("rollback reaction p99 (gate turns -> 100% primary)", _fmt(percentile(f.reaction, 99), " s"),
         f"<= {reaction_target:g} s"),
        ("violating check -> 100% primary, max", _fmt(max(f.check_to_route, default=None), " s"), ""),
        ("rolling releases not rolled back", str(f.not_rolled_back), "0"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"N = {f.n} releases, {min(args.rolling, f.n)} rolling out, analysis.interval {args.interval}s, "
             f"operator tick {tick:g}s, window {args.seconds:g}s",
             f"  {'':{width}}  {'measured':>14}  target (1,000 releases, 30 s interval)"]
    lines += [f"  {name:{width}}  {value:>14}  {target}" for name, value, target in rows]
    if f.top:
        lines.append("  operator's requests/s by verb and resource: "
                     + ", ".join(f"{verb} {res} {rate:.1f}" for (verb, res), rate in f.top))
    lines += [f"  note: {note}" for note in f.notes]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", default="100,300,1000", help="comma-separated N")
    parser.add_argument("--interval", type=int, default=30, help="the releases' analysis.interval, s")
    parser.add_argument("--seconds", type=float, default=150, help="the measured window, s")
    parser.add_argument("--rolling", type=int, default=5, help="releases rolling out during the window")
    parser.add_argument("--tick-seconds", type=float, default=None,
                        help=f"CANARIST_TICK_SECONDS for the operator (default: its own, {OPERATOR_DEFAULT_TICK:g})")
    parser.add_argument("--operator-source", metavar="REV", default=None,
                        help="run the operator, chart and CRD of this git revision (default: the working tree)")
    parser.add_argument("--baseline", type=float, default=20, help="s of API rate measured without the operator")
    parser.add_argument("--setup-timeout", type=float, default=600, help="s for every release to become Idle")
    parser.add_argument("--quick", action="store_true", help="N=3, 1 rolling, 5 s interval, 20 s window")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.releases, args.rolling, args.interval, args.seconds, args.baseline = "3", 1, 5, 20, 5
    print(f"today, before optimisation: {ISSUE_FIGURES}")
    for n, today in sorted(TODAY.items()):
        print(f"today, this script: N={n}: " + ", ".join(f"{k} {v}" for k, v in today.items()))
    with tempfile.TemporaryDirectory(prefix="canarist-scale-") as tmp:
        for n in (int(x) for x in args.releases.split(",")):
            started = time.monotonic()
            try:
                figures = run_one(n, args, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - what broke at this N is a figure too
                print(f"N = {n}: failed after {time.monotonic() - started:.0f}s: {type(exc).__name__}: {exc}",
                      flush=True)
                log = Path(tmp) / f"operator-{n}.log"
                if log.exists():
                    print("  operator log, last lines:\n" + log.read_text(errors="replace")[-1500:])
                continue
            print(report(figures, args) + f"\n  ({time.monotonic() - started:.0f}s for this N)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
