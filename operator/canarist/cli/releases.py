"""`canarist status|watch|list|abort|promote|pause|resume|retry`: reading and steering CanaryReleases.

Manual control writes annotations on the CanaryRelease (never its spec, which a GitOps tool may
own); abort, promote and retry carry a fresh token so each request acts exactly once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone

import kubernetes
import urllib3

from canarist.api.crd import GROUP, PLURAL, VERSION

ENDED = {"Succeeded", "RolledBack", "Idle"}
ROLLING = {"Shadowing", "Progressing", "Paused", "Promoting", "Initializing"}
# With no rollout running, watch waits this long for one to start (a new revision takes a tick).
SETTLE_SECONDS = 5.0


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def register(sub: argparse._SubParsersAction) -> None:
    def common(parser: argparse.ArgumentParser, name: bool = True) -> None:
        parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
        parser.add_argument("--context", help="kubeconfig context")
        parser.add_argument("-n", "--namespace", help="namespace (default: the context's, else 'default')")
        if name:
            parser.add_argument("name", help="CanaryRelease name")

    p = sub.add_parser("status", help="phase, step, weights, every check against its threshold, recent events")
    common(p)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("watch", help="follow a rollout live until it ends")
    common(p)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default: 1)")
    p.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds (default: 3600)")
    p.set_defaults(func=cmd_watch)
    p = sub.add_parser("list", help="CanaryReleases with phase and weight")
    common(p, name=False)
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.set_defaults(func=cmd_list)
    for action, text in (("abort", "roll the running rollout back now"),
                         ("promote", "promote the running rollout now, skipping the remaining steps"),
                         ("retry", "release a rolled-back revision again without editing it"),
                         ("pause", "hold the rollout where it is (no checks, no steps)"),
                         ("resume", "continue a paused rollout")):
        p = sub.add_parser(action, help=text)
        common(p)
        p.set_defaults(func=cmd_request, action=action)


# -- cluster access ----------------------------------------------------------------------------

class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        try:
            if args.kubeconfig or args.context or not _in_cluster():
                kubernetes.config.load_kube_config(config_file=args.kubeconfig, context=args.context)
            else:
                kubernetes.config.load_incluster_config()
        except (kubernetes.config.ConfigException, FileNotFoundError, TypeError) as exc:
            raise CliError(f"no cluster access: {exc}; set KUBECONFIG or pass --kubeconfig", 2) from None
        self.namespace = args.namespace or _context_namespace(args) or "default"
        self.custom = kubernetes.client.CustomObjectsApi()
        self.core = kubernetes.client.CoreV1Api()

    def call(self, what: str, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                if "the server could not find the requested resource" in (exc.body or "") or "404 page" in (exc.body or ""):
                    raise CliError("the CanaryRelease CRD is not installed in this cluster; install canarist "
                                   "(helm install canarist charts/canarist) or apply crds/", 2) from None
                raise CliError(f"{what} not found in namespace {self.namespace!r} "
                               f"(see: canarist list -n {self.namespace})") from None
            if exc.status in (401, 403):
                raise CliError(f"not allowed to access {what}: {exc.reason}; check your RBAC", 2) from None
            raise CliError(f"the API server refused: {exc.status} {exc.reason}", 2) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise CliError(f"no cluster access: cannot reach the API server ({type(exc).__name__}); "
                           "check KUBECONFIG / --kubeconfig and that the cluster is up", 2) from None

    def get(self, name: str) -> dict:
        return self.call(f"canaryrelease {name!r}", self.custom.get_namespaced_custom_object,
                         GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=10)

    def events(self, name: str, limit: int = 8) -> list:
        items = self.call("events", self.core.list_namespaced_event, self.namespace,
                          field_selector=f"involvedObject.name={name},involvedObject.kind=CanaryRelease",
                          _request_timeout=10).items
        items.sort(key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
        return items[-limit:]


def _in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ


def _context_namespace(args: argparse.Namespace) -> str | None:
    try:
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file=args.kubeconfig)
    except Exception:
        return None
    if args.context:
        active = next((c for c in contexts if c["name"] == args.context), active)
    return (active or {}).get("context", {}).get("namespace")


# -- rendering ---------------------------------------------------------------------------------

def _ago(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "-"
    then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    seconds = int((now - then).total_seconds())
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"


def _value(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def steps_bar(status: dict) -> str:
    steps = status.get("pinnedSteps") or []
    if not steps:
        return ""
    index, weight, phase = status.get("stepIndex", 0), status.get("canaryWeight", 0), status.get("phase")
    cells = []
    shadow = (status.get("shadow") or {}).get("state")
    if shadow is not None:
        cells.append({"Passed": "shadow✓", "Failed": "shadow✗", "Skipped": "shadow–"}.get(shadow, "[shadow]"))
        if shadow not in ("Passed", "Skipped"):
            return " → ".join(cells + [f"{step}%" for step in steps])
    for i, step in enumerate(steps):
        if phase == "Succeeded" or (phase in ("Progressing", "Paused", "Promoting") and weight and i < index):
            cells.append(f"{step}%✓")
        elif phase in ("Progressing", "Paused", "Promoting") and weight and i == index:
            cells.append(f"[{step}%]")
        elif phase == "RolledBack" and i == index:
            cells.append(f"{step}%✗")
        else:
            cells.append(f"{step}%")
    return " → ".join(cells)


def render_shadow(status: dict) -> list[str]:
    """The shadow phase: mirrored share, judged pairs, state, and its verdicts once it ended."""
    shadow = status.get("shadow")
    if not shadow:
        return []
    rules = status.get("pinnedShadow") or {}
    state = shadow.get("state", "Running")
    lines = [f"  shadow     {state}: {shadow.get('percent')}% of requests mirrored ({shadow.get('mirror', 'Route')}), "
             f"{shadow.get('pairs') or 0} judged pairs (needs {rules.get('minPairs', '-')}, at least "
             f"{rules.get('minDuration', '-')}); no user sees the canary's answers"]
    if state != "Running":
        for c in shadow.get("checks") or []:
            lines.append(f"    verdict  {c['name']:<20} {c['result']:<8} {_value(c.get('value')):>10}"
                         + (f"   {c['message']}" if c.get("message") else ""))
    return lines


def render_cohorts(status: dict) -> list[str]:
    """Each cohort: its canary share as routed, its judged coverage and its own checks' values."""
    cohorts = status.get("cohorts") or []
    if not cohorts:
        return []
    checks = status.get("lastChecks") or []
    lines = [f"  cohorts    {'NAME':<16} {'CANARY':>6}  {'JUDGED':<14} CHECKS"]
    for cohort in cohorts:
        name = cohort["name"]
        judged = "-" if cohort.get("judged") is None else str(cohort["judged"])
        if cohort.get("minSamples"):
            judged += f" (needs {cohort['minSamples']})"
        own = [f"{c['name'].removesuffix(f'[{name}]')}={_value(c.get('value'))} {c['result']}"
               for c in checks if c.get("cohort") == name and not c["name"].startswith("judge-samples")]
        lines.append(f"             {name:<16} {cohort.get('canaryWeight', 0):>5}%  {judged:<14} "
                     f"{', '.join(own) or '-'}")
    return lines


def render_config(revisions: dict) -> list[str]:
    """The tracked ConfigMaps and Secrets of both revisions (names and content hashes), and what
    the canary's revision changes: the reason for its rollout."""
    primary = {(c["kind"], c["name"]): c.get("hash") for c in revisions.get("primaryConfig") or []}
    canary = {(c["kind"], c["name"]): c.get("hash") for c in revisions.get("canaryConfig") or []}
    lines = []
    if revisions.get("changes"):
        lines.append(f"  changes    {'; '.join(revisions['changes'])}")
    if primary or canary:
        lines.append(f"    {'TRACKED':<36} {'PRIMARY':<10} CANARY")
        for kind, name in sorted(set(primary) | set(canary)):
            def short(side: dict) -> str:
                return "-" if (kind, name) not in side else (side[(kind, name)] or "absent")[:8]
            mark = "  changed" if (kind, name) in primary and (kind, name) in canary \
                and primary[(kind, name)] != canary[(kind, name)] else ""
            lines.append(f"    {kind + '/' + name:<36} {short(primary):<10} {short(canary)}{mark}")
    return lines


def render_status(body: dict, events: list, now: datetime) -> str:
    status = body.get("status") or {}
    meta = body["metadata"]
    weight = status.get("canaryWeight", 0)
    steps = status.get("pinnedSteps") or body["spec"].get("steps") or []
    lines = [
        f"CanaryRelease {meta['namespace']}/{meta['name']}  (target Deployment {body['spec']['targetRef']['name']})",
        f"  phase      {status.get('phase', 'Pending')}",
        f"  traffic    primary {100 - weight}%  canary {weight}%",
    ]
    lines += render_shadow(status)
    if steps:
        lines.append(f"  steps      {steps_bar(status) or ' → '.join(f'{s}%' for s in steps)}")
    lines += render_cohorts(status)
    revisions = status.get("revisions") or {}
    lines.append(f"  revisions  primary {revisions.get('primary') or '-'}  canary {revisions.get('canary') or '-'}")
    lines += render_config(revisions)
    counts = (f"passed {status.get('checksPassed', 0)}, failed {status.get('checksFailed', 0)}"
              f" (limit {((status.get('pinnedAnalysis') or {}).get('failureLimit', '-'))}), "
              f"inconclusive {status.get('checksInconclusive', 0)}, provider errors {status.get('providerErrors', 0)}")
    lines.append(f"  this step  {counts}")
    if status.get("message"):
        lines.append(f"  message    {status['message']}")
    checks = status.get("lastChecks") or []
    if checks:
        lines.append(f"  checks ({_ago(status.get('lastCheckAt'), now)}):")
        lines.append(f"    {'NAME':<24} {'RESULT':<8} {'VALUE':>10}  THRESHOLD")
        for c in checks:
            bounds = " and ".join(x for x in (f">= {c['min']:g}" if c.get("min") is not None else "",
                                              f"<= {c['max']:g}" if c.get("max") is not None else "") if x)
            lines.append(f"    {c['name']:<24} {c['result']:<8} {_value(c.get('value')):>10}  {bounds or '-'}"
                         + (f"   {c['message']}" if c.get("message") and c["result"] != "Passed" else ""))
    lines += render_evidence(status)
    conditions = status.get("conditions") or []
    if conditions:
        lines.append("  conditions " + "  ".join(f"{c['type']}={c['status']}" for c in conditions))
    if events:
        lines.append("  events:")
        for e in events:
            stamp = e.last_timestamp or e.event_time or e.metadata.creation_timestamp
            lines.append(f"    {_ago(stamp.isoformat() if stamp else None, now):>8}  {e.type:<7} {e.reason:<16} "
                         f"{e.message}")
    return "\n".join(lines)


MEASURES = {"ratio": ("canary/primary rate", "x"), "scoreDrop": ("score drop", ""), "lossShare": ("loss share", "")}


def render_evidence(status: dict) -> list[str]:
    """The comparison gates: estimate and interval against the tolerance, and the evidence toward
    each decision (a decision needs the threshold)."""
    evidence = status.get("evidence") or []
    if not evidence:
        return []
    alpha = (status.get("pinnedAnalysis") or {}).get("alpha", 0.01)
    lines = [f"  evidence (confidence {1 - alpha:g}; rollback or promotion needs {evidence[0]['threshold']:g}):",
             f"    {'GATE':<14} {'MEASURE':<20} {'ESTIMATE':>9} {'INTERVAL':>17} {'TOLERANCE':>9}"
             f" {'ROLLBACK':>9} {'PROMOTE':>9}  VERDICT"]
    for e in evidence:
        label, unit = MEASURES.get(e.get("measure", ""), (e.get("measure", ""), ""))
        high = "inf" if e.get("high") is None else f"{e['high']:.3g}"
        interval = "-" if e.get("low") is None else f"{e['low']:.3g}-{high}{unit}"
        estimate = "-" if e.get("estimate") is None else f"{e['estimate']:.3g}{unit}"
        lines.append(f"    {e['name']:<14} {label:<20} {estimate:>9} {interval:>17} {e['tolerance']:>8g}{unit or ' '}"
                     f" {e.get('rollback', 1):>9.3g} {e.get('promote', 1):>9.3g}  {e.get('verdict', '')}"
                     + (f"; {e['needs']}" if e.get("needs") and e.get("verdict") == "Undecided" else ""))
        if e.get("stepMaxRatio") is not None and e.get("stepEvidence") is not None:
            lines.append(f"    {'':<14} step guard: below {e['stepMaxRatio']:g}x before more traffic, evidence "
                         f"{e['stepEvidence']:.3g} of {e.get('stepThreshold', 10):g}")
    return lines


# -- commands ----------------------------------------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    client = Client(args)
    body = client.get(args.name)
    print(render_status(body, client.events(args.name), datetime.now(timezone.utc)))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Follow until a rollout ends: exit 0 when promoted (or nothing to do), 3 when rolled back."""
    client = Client(args)
    started = time.monotonic()
    last, seen_rollout, tty = None, False, sys.stdout.isatty()
    while True:
        body = client.get(args.name)
        status = body.get("status") or {}
        phase = status.get("phase")
        seen_rollout = seen_rollout or phase in ROLLING
        key = (phase, status.get("canaryWeight"), status.get("lastCheckAt"), status.get("message"))
        if key != last:
            now = datetime.now(timezone.utc)
            if tty:
                sys.stdout.write("\x1b[2J\x1b[H" + render_status(body, client.events(args.name), now) + "\n")
            else:
                print(f"{now:%H:%M:%S} {phase or 'Pending':<12} canary {status.get('canaryWeight', 0):>3}%  "
                      f"{steps_bar(status)}  {status.get('message', '')}")
            sys.stdout.flush()
            last = key
        settled = not seen_rollout and time.monotonic() - started >= SETTLE_SECONDS
        if phase in ENDED and (seen_rollout or settled):
            return 3 if phase == "RolledBack" else 0
        if time.monotonic() - started > args.timeout:
            raise CliError(f"gave up after {args.timeout:g}s; the rollout is still {phase}")
        time.sleep(args.interval)


def cmd_list(args: argparse.Namespace) -> int:
    client = Client(args)
    if args.all_namespaces:
        items = client.call("canaryreleases", client.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                            _request_timeout=10)["items"]
    else:
        items = client.call("canaryreleases", client.custom.list_namespaced_custom_object, GROUP, VERSION,
                            client.namespace, PLURAL, _request_timeout=10)["items"]
    if not items:
        where = "any namespace" if args.all_namespaces else f"namespace {client.namespace!r}"
        print(f"No CanaryReleases in {where}.")
        return 0
    print(f"{'NAMESPACE':<16} {'NAME':<24} {'PHASE':<12} {'CANARY':>6}  MESSAGE")
    for item in items:
        status = item.get("status") or {}
        print(f"{item['metadata']['namespace']:<16} {item['metadata']['name']:<24} "
              f"{status.get('phase', 'Pending'):<12} {status.get('canaryWeight', 0):>5}%  {status.get('message', '')}")
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    client = Client(args)
    body = client.get(args.name)  # a clear "not found" before writing anything
    token = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    value = {"abort": token, "promote": token, "retry": token, "pause": "true", "resume": None}[args.action]
    key = "canarist.dev/paused" if args.action in ("pause", "resume") else f"canarist.dev/{args.action}"
    client.call(f"canaryrelease {args.name!r}", client.custom.patch_namespaced_custom_object, GROUP, VERSION,
                client.namespace, PLURAL, args.name, {"metadata": {"annotations": {key: value}}})
    phase = (body.get("status") or {}).get("phase", "Pending")
    print(f"{args.action} requested for {client.namespace}/{args.name} (phase {phase}); "
          f"follow with: canarist watch {args.name} -n {client.namespace}")
    return 0
