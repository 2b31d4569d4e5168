"""`make demo`: two real releases on the embedded local stack, watched in the terminal.

The local stack (kube-apiserver with simulated nodes, Prometheus, Traefik as the gateway), the
judge service with a scripted LLM, canarist installed with Helm and run with the chart's
ServiceAccount, and an AI service whose pods are processes on their pod IPs, answering requests
sent through the gateway, which splits them by the HTTPRoute canarist writes. Release 1, a new
image, is good and is promoted step by step. Release 2 is the change that regresses AI services
quietly: an edit of the system prompt in the ConfigMap the pods read it from. It sounds harmless
("round every result to the nearest ten") and makes most answers wrong, with no errors and no
latency change; canarist releases it like a new image (the primary keeps its copy of the old
prompt). Every release starts in shadow: the canary answers a mirrored copy of every request, no
user sees those answers, and the judge compares both versions' answers to the same requests; the
anytime-valid evidence stops release 2 there, before any user got an answer from it. A timeline
PNG (shadow, weight, metrics, evidence) is written at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import kubernetes

from canarist.api.crd import GROUP, PLURAL, VERSION
from canarist.cli.releases import steps_bar

from .chart import install_chart, operator_kubeconfig
from .cluster import PROCESS_ANNOTATION
from .gateway import GATEWAY_NAME, GATEWAY_NAMESPACE
from .demoapp import prompt_digest
from .gateway_traffic import GatewayTraffic
from .judge_server import JudgeServer
from .operator_process import OperatorProcess
from .procs import wait_until
from .scripted_llm import ScriptedLLM
from .shadow_mirror import ShadowMirror
from .stack import LocalStack, enter_command
from .podprocs import ARGS_ANNOTATION
from .timeline import Timeline
from .traffic import arithmetic_questions

NAMESPACE = "demo"
APP = "support-bot"
HOSTNAME = "bot.demo.test"
STEPS = [5, 20, 50, 100]
PROMPTS = f"{APP}-prompts"
PROMPT = "You are a support bot for a calculator. Give every result exactly."
ROUNDING_PROMPT = ("You are a friendly support bot for a calculator. Keep answers light and easy to read: "
                   "round every result to the nearest ten.")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def say(text: str = "") -> None:
    print(text, flush=True)


def canary_release(judge_url: str, interval: str, shadow_for: str = "15s") -> dict:
    rate = (f'sum(rate(http_requests_total{{namespace="{{{{ namespace }}}}",deployment="{{{{ canary }}}}"{{sel}}}}[20s]))')
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CanaryRelease", "metadata": {"name": APP},
        "spec": {
            "targetRef": {"name": APP}, "service": {"port": 8080},
            "routing": {"gatewayAPI": {"parentRefs": [{"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}],
                                       "hostnames": [HOSTNAME]}},
            "steps": STEPS,
            # First the shadow: every request mirrored to the canary, its answers judged and discarded.
            # Traefik cannot mirror, so the demo's traffic driver plays the mirroring gateway (External).
            "shadow": {"percent": 100, "minDuration": shadow_for, "minPairs": 20, "mirror": "External"},
            "analysis": {
                "interval": interval, "failureLimit": 1,
                "metrics": [{"name": "error-rate", "max": 0.02, "prometheus": {
                    "query": rate.replace("{sel}", ',code=~"5.."') + " / " + rate.replace("{sel}", "")}}],
                # Answer quality: the canary against the primary on the same questions, head to head,
                # with anytime-valid evidence (it may lose at most 60 % of comparisons, ties half).
                "compare": [{"name": "quality", "judge": {"url": judge_url, "maxLossShare": 0.6, "timeout": "3s"}}],
                "alpha": 0.01,
            },
        },
    }


def _loss_share(evidence: dict | None) -> float | None:
    return None if evidence is None else evidence.get("estimate")


def deployment(image: str, args: str) -> dict:
    """The service's Deployment; its pods are the demo application's processes, run with `args`."""
    return {"metadata": {"name": APP}, "spec": {
        "replicas": 3, "selector": {"matchLabels": {"app": APP}},
        "template": {"metadata": {"labels": {"app": APP},
                                  "annotations": {PROCESS_ANNOTATION: "demoapp", ARGS_ANNOTATION: args}},
                     "spec": {"containers": [{
                         "name": "app", "image": image, "ports": [{"containerPort": 8080}],
                         # The system prompt lives in a ConfigMap, as it usually does.
                         "env": [{"name": "SYSTEM_PROMPT",
                                  "valueFrom": {"configMapKeyRef": {"name": PROMPTS, "key": "system-prompt"}}}]}]}}}}


class Demo:
    def __init__(self, stack: LocalStack, judge: JudgeServer, api: kubernetes.client.ApiClient,
                 reporting: str) -> None:
        self.stack, self.judge, self.api, self.reporting = stack, judge, api, reporting
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.apps_api = kubernetes.client.AppsV1Api(api)
        self.timeline = Timeline()
        self.started = time.monotonic()
        self._stop = threading.Event()

    def status(self) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, APP).get("status") or {}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # -- the timeline, sampled in the background -----------------------------------------------

    def record(self) -> None:
        deadline = time.monotonic() + 1800  # bounded even if the demo is left running
        while not self._stop.wait(1.0) and time.monotonic() < deadline:
            try:
                status = self.status()
                rolling = status.get("phase") in ("Shadowing", "Progressing", "Paused", "Promoting")
                checks = {c["name"]: c for c in status.get("lastChecks", [])} if rolling else {}
                evidence = next((e for e in status.get("evidence", []) if e["name"] == "quality"), None)
                shown = evidence if rolling else None
                self.timeline.add(self.elapsed(), status.get("canaryWeight", 0),
                                  checks.get("error-rate", {}).get("value"),
                                  _loss_share(shown),
                                  shown.get("rollback") if shown else None, shown.get("promote") if shown else None,
                                  evidence.get("threshold") if evidence else None,
                                  shadow=status.get("phase") == "Shadowing")
            except Exception:  # a missed sample is fine; the picture is a summary
                pass

    # -- one release -------------------------------------------------------------------------

    def new_image(self, image: str) -> None:
        say(f"    kubectl set image deployment/{APP} app={image}")
        self.apps_api.patch_namespaced_deployment(APP, NAMESPACE, {"spec": {"template": {
            "spec": {"containers": [{"name": "app", "image": image}]}}}})

    def new_prompt(self, prompt: str) -> None:
        say(f"    kubectl patch configmap {PROMPTS} -p '{{\"data\": {{\"system-prompt\": \"{prompt}\"}}}}'")
        kubernetes.client.CoreV1Api(self.api).patch_namespaced_config_map(PROMPTS, NAMESPACE,
                                                                          {"data": {"system-prompt": prompt}})

    def release(self, title: str, mark: str, change, timeout: float) -> dict:
        say(f"\n=== {title}")
        change()
        self.timeline.mark(self.elapsed(), mark, "tab:gray", height=88)
        last, seen_rollout, deadline = None, False, time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            phase = status.get("phase")
            seen_rollout = seen_rollout or phase in ("Shadowing", "Progressing", "Promoting")
            checks = "  ".join(f"{c['name']}={'-' if c.get('value') is None else round(c['value'], 3)}"
                               for c in status.get("lastChecks", []))
            shadow = status.get("shadow") or {}
            where = (f"mirrored {shadow.get('percent')}%, {shadow.get('pairs') or 0} judged pairs"
                     if phase == "Shadowing" else steps_bar(status))
            line = f"{phase or '-':<12} canary {status.get('canaryWeight', 0):>3}%  {where:<40} {checks}"
            if line != last:
                say(f"[{self.elapsed():6.1f}s] {line}")
                last = line
            if seen_rollout and phase in ("Succeeded", "RolledBack"):
                changes = (status.get("revisions") or {}).get("changes") or []
                if changes:
                    say(f"  released because: {'; '.join(changes)}")
                if shadow:
                    say(f"  shadow {shadow.get('state')}: {shadow.get('pairs') or 0} judged pairs of the "
                        f"primary's and the canary's answers to the same mirrored requests")
                say(f"  -> {status.get('message')}")
                return status
            time.sleep(0.5)
        raise TimeoutError(f"{title} did not finish within {timeout:.0f}s; status: {self.status()}")


def run(output: Path, fast: bool) -> Path:
    interval = "3s" if fast else "5s"
    workdir = Path(tempfile.mkdtemp(prefix="canarist-demo-"))
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        say("canarist demo: starting the local stack (kube-apiserver, etcd, scheduler, controller-manager,")
        say("kwok-simulated nodes, Prometheus); the first run builds the cluster binaries from Go modules...")
        stack = cleanup.enter_context(LocalStack("canarist-demo", nodes=2))
        say(f"  cluster up, in a network namespace of its own; to look inside from another terminal: "
            f"{enter_command()}")
        say(f"    then: export KUBECONFIG={stack.kubeconfig}; kubectl get pods -n {NAMESPACE} -o wide; "
            f"Prometheus answers at {stack.prometheus.url}")
        llm = cleanup.enter_context(ScriptedLLM.start(workdir=workdir / "llm"))
        judge = JudgeServer.start(workdir / "judge", llm.base_url, sample_rate=1.0)
        cleanup.callback(judge.stop)
        say(f"  judge service on {judge.url} (its LLM: a scripted OpenAI-compatible server on {llm.url})")

        kubectl = stack.cluster.kubectl
        for ns in (NAMESPACE, "canarist-system"):
            kubectl("create", "namespace", ns)
        install_chart(stack, "canarist-system", "canarist", "--set", f"watchNamespaces={{{NAMESPACE}}}",
                      "--set", "judge.enabled=false")
        say("  helm install canarist charts/canarist -n canarist-system (RBAC for namespace 'demo')")
        operator = OperatorProcess(operator_kubeconfig(stack, "canarist-system", "canarist"), NAMESPACE,
                                   stack.prometheus.url, workdir / "operator.log", tick_seconds=1).start()
        cleanup.callback(operator.stop)
        say("  operator: kopf run -m canarist.handlers, authenticated as the chart's ServiceAccount")

        api = kubernetes.config.new_client_from_config(config_file=str(stack.kubeconfig))
        release = f"{NAMESPACE}/{APP}"
        reporting = f"--judge-url {judge.url} --release {release}"  # each pod reports its answers to the judge
        kubernetes.client.CoreV1Api(api).create_namespaced_config_map(NAMESPACE, {
            "metadata": {"name": PROMPTS}, "data": {"system-prompt": PROMPT}})
        kubernetes.client.AppsV1Api(api).create_namespaced_deployment(
            NAMESPACE, deployment("registry.demo/bot:v1", reporting))
        custom = kubernetes.client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, canary_release(judge.url, interval))
        demo = Demo(stack, judge, api, reporting)
        wait_until(lambda: demo.status().get("phase") == "Idle", 90, "the CanaryRelease to initialize")
        say(f"  CanaryRelease {release}: primary created, all traffic on it; steps {STEPS}, gates: error rate "
            "<= 2%, and the judge comparing both versions' answers head to head (the canary may lose at most 60 %, "
            "decided with anytime-valid evidence at 99 % confidence)")
        assert stack.gateway is not None
        mirror = ShadowMirror(api, NAMESPACE, APP, f"{APP}-canary").start()
        cleanup.callback(mirror.stop)
        traffic = cleanup.enter_context(GatewayTraffic(stack.gateway.url, HOSTNAME, rps=25, mirror=mirror,
                                                       questions=arithmetic_questions(60)))
        recorder = threading.Thread(target=demo.record, daemon=True)
        recorder.start()
        cleanup.callback(demo._stop.set)
        wait_until(lambda: traffic.served()[f"{APP}-primary"] > 0, 60, "the primary's pods answering")
        say(f"  traffic: 25 requests/s of arithmetic questions to {stack.gateway.url} with Host: {HOSTNAME};")
        say("  the gateway (Traefik) splits them by the HTTPRoute's weights over the pods of both versions;")
        say("  Traefik cannot mirror, so in shadow the traffic driver copies each request to the canary, as an")
        say("  Envoy-based gateway would (same X-Request-Id, Host with -shadow); those answers reach no user")

        first = demo.release("release 1: a new image (good answers)", "release v2",
                             lambda: demo.new_image("registry.demo/bot:v2"), 240)
        if first.get("phase") == "Succeeded":
            demo.timeline.mark(demo.elapsed(), "promoted", "tab:green")
        # Rounded results: most answers wrong, still 200 OK at the same latency.
        second_started = time.time()
        second = demo.release("release 2: a system prompt edit (answers degrade; HTTP 200, same latency)",
                              "prompt edit", lambda: demo.new_prompt(ROUNDING_PROMPT), 240)
        # Users answered with the edited prompt (the promoted revision's pods may still answer a few
        # requests with the old one while the gateway applies the route of release 1's end).
        users_on_canary = traffic.prompts(since=second_started)[(APP, prompt_digest(ROUNDING_PROMPT))]
        copies = traffic.mirrored(since=second_started)[APP]
        if second.get("phase") == "RolledBack":
            demo.timeline.mark(demo.elapsed(), "rolled back", "tab:red")
        time.sleep(2)
        demo._stop.set()
        recorder.join(5)
        png = demo.timeline.render(output, "canarist demo: a good release promoted, a worse one stopped in shadow "
                                           "by the judge")
        codes = traffic.codes()
        say(f"\nrelease 1: {first.get('phase')}; release 2: {second.get('phase')}")
        say(f"  users' requests through the gateway: {codes['200']} answered, "
            f"{sum(codes.values()) - codes['200']} failed ({dict(traffic.served())} by Deployment)")
        say(f"  {second.get('message')}")
        say(f"  release 2 in shadow: the canary answered {copies} mirrored copies and {users_on_canary} user "
            "requests with the edited prompt (its answers were judged, never shown)")
        failed = _export_count(judge.url, release)
        say(f"  the judge kept {failed} failed answers as eval cases: "
            f"curl '{judge.url}/v1/export?release={release}'  (while the demo runs)")
        say(f"\ntimeline written to {png.resolve()}")
        say("stopping everything...")
        copy = kubernetes.client.CoreV1Api(api).read_namespaced_config_map(f"{PROMPTS}-primary", NAMESPACE)
        kept = (copy.data or {}).get("system-prompt") == PROMPT
        say(f"  the primary's copy {PROMPTS}-primary {'still holds the stable prompt' if kept else 'CHANGED'}; "
            f"the pods of {APP}-primary never saw the edit")
        if first.get("phase") != "Succeeded" or second.get("phase") != "RolledBack" or not kept or users_on_canary:
            raise SystemExit(f"unexpected outcome; operator log:\n{operator.log()}")
    say("done: nothing of the demo is left running.")
    return output


def _export_count(judge_url: str, release: str) -> int:
    url = f"{judge_url}/v1/export?" + urllib.parse.urlencode({"release": release})
    with _OPENER.open(url, timeout=10) as response:
        return sum(1 for line in response.read().splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m canarist.devstack.demo", description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("demo-output/canarist-demo-timeline.png"))
    parser.add_argument("--fast", action="store_true", help="shorter analysis intervals (used by the tests)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        run(args.output, args.fast)
    except KeyboardInterrupt:
        say("\ninterrupted: everything was stopped.")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
