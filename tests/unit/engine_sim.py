"""A tiny in-memory world for driving the engine tick by tick: it applies actions like the
handlers do, minus Kubernetes, so tests read as rollout stories."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from canarist.api.spec import CanaryReleaseSpec
from canarist.api.status import CanaryReleaseStatus, Check, CheckResult
from canarist.engine import (Action, Decision, EnsurePrimary, Requests, ScaleCanary, SetRoute, World, analysis_due,
                             comparisons_due, decide)
from canarist.engine.plan import apply_in_order

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def make_spec(**analysis) -> CanaryReleaseSpec:
    body = {
        "targetRef": {"name": "web"},
        "service": {"port": 8080},
        "routing": {"gatewayAPI": {"parentRefs": [{"name": "gw"}]}},
        "analysis": {"interval": "10s", "metrics": [
            {"name": "error-rate", "prometheus": {"query": "q"}, "max": 0.01}], **analysis},
    }
    return CanaryReleaseSpec.model_validate(body)


def check(result: CheckResult, value: float | None = None, name: str = "error-rate") -> Check:
    return Check(name=name, result=result, value=value, max=0.01, at=T0)


PASS = (check(CheckResult.PASSED, 0.0),)
FAIL = (check(CheckResult.FAILED, 0.5),)
NODATA = (check(CheckResult.NO_DATA),)
ERROR = (check(CheckResult.ERROR),)


@dataclass
class Sim:
    spec: CanaryReleaseSpec = field(default_factory=make_spec)
    status: CanaryReleaseStatus = field(default_factory=CanaryReleaseStatus)
    now: datetime = T0
    target: str | None = "rev1"
    primary: str | None = None
    canary_up: bool = False
    route: tuple[int, int] | None = None
    requests: Requests = field(default_factory=Requests)
    problems: tuple[str, ...] = ()
    canary_broken: bool = False  # its pods crash: never Ready even when scaled up
    canary_degraded: bool = False  # some of its pods are not Ready, at least one is
    route_fails: bool = False  # writing the route fails (an API error)
    template: str | None = None  # the target's pod template hash (default: its revision)
    config: tuple = ()  # the target's tracked ConfigMaps and Secrets (TrackedConfig)
    history: list[Decision] = field(default_factory=list)
    mirror: int = 0  # percent of requests the route mirrors to the canary
    mirror_problem: str | None = None  # the gateway cannot mirror
    pairs: int | None = None  # judged shadow pairs the judge reports (with the checks)
    cohort_route: tuple[tuple[str, int], ...] = ()  # each cohort rule's canary weight, as routed
    cohorts_stuck: bool = False  # writes leave the cohort rules as they were (a gateway lagging behind)

    def tick(self, checks: tuple[Check, ...] | None = None, advance: float = 10, evidence=None,
             comparisons: tuple[Check, ...] | None = None) -> Decision:
        """`comparisons` (and `evidence`) stand for the comparison gates, which run on every tick of a step."""
        """One handler tick `advance` seconds after the last; `checks` are used only if analysis is due."""
        self.now += timedelta(seconds=advance)
        due = analysis_due(self.status, self.now)
        compare_due = comparisons_due(self.status) and comparisons is not None
        world = World(
            target_revision=self.target, primary_revision=self.primary, primary_ready=self.primary is not None,
            target_template=self.template or self.target, target_config=tuple(self.config),
            canary_has_pods=self.canary_up,
            canary_ready=self.canary_up and not self.canary_broken and not self.canary_degraded,
            canary_available=self.canary_up and not self.canary_broken,
            routed_weight=self.route[1] if self.route else None,
            routed_mirror=self.mirror, mirror_problem=self.mirror_problem,
            routed_cohorts=self.cohort_route if self.route else None,
            shadow_pairs=self.pairs if due else None,
            problems=self.problems, requests=self.requests,
            checks=(checks if checks is not None else ()) if due else None,
            comparisons=comparisons if compare_due else None,
            evidence=tuple(evidence) if (due or compare_due) and evidence is not None else None,
        )
        decision = decide(self.spec, self.status, world, self.now, generation=1)
        self.outcome = apply_in_order(decision.actions, self._apply)
        self.status = decision.status
        if self.route is not None:
            self.status.canary_weight = self.route[1]  # the handler confirms the weight it routed
        self.history.append(decision)
        return decision

    def _apply(self, action: Action) -> None:
        if isinstance(action, EnsurePrimary):
            self.primary = action.revision
        elif isinstance(action, SetRoute):
            if self.route_fails:
                raise RuntimeError("HTTPRoute write failed: 500")
            self.route = (action.primary, action.canary)
            self.mirror = action.mirror
            if not self.cohorts_stuck:
                self.cohort_route = tuple((cohort.name, weight) for cohort, weight in action.cohorts)
        elif isinstance(action, ScaleCanary):
            self.canary_up = action.up

    def request(self, **kwargs) -> None:
        self.requests = replace(self.requests, **kwargs)

    def events(self) -> list[str]:
        return [e.reason for d in self.history for e in d.events]

    def weights(self) -> list[int]:
        """Canary weights in the order they were routed, repeats collapsed."""
        seen: list[int] = []
        for d in self.history:
            for a in d.actions:
                if isinstance(a, SetRoute) and a in self._applied(d) and (not seen or seen[-1] != a.canary):
                    seen.append(a.canary)
        return seen

    def _applied(self, decision: Decision) -> list:
        return decision.actions if not self.route_fails else [a for a in decision.actions if not isinstance(a, SetRoute)]

    def initialized(self) -> "Sim":
        self.tick()  # creates the primary
        self.tick()  # primary Ready: the route sends everything to it
        self.tick()  # the route is seen on the primary -> Idle, the target scaled down
        return self
