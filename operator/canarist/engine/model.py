"""What the engine reads (World) and what it asks for (Decision: actions, events, new status)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from canarist.api.spec import Cohort
from canarist.api.status import CanaryReleaseStatus, Check, Evidence, TrackedConfig


@dataclass(frozen=True)
class Requests:
    """Manual control, read from annotations. One-shot actions carry a token: a new token acts once."""

    abort: str | None = None
    promote: str | None = None
    retry: str | None = None
    paused: bool = False


@dataclass(frozen=True)
class World:
    """What the handler observed this tick. Nothing here is decided; everything is read."""

    target_revision: str | None          # revision of the user's Deployment (pod template and tracked
    #                                      configuration); None if it is missing
    target_template: str | None = None   # its pod template hash alone
    target_config: tuple[TrackedConfig, ...] = ()  # its tracked ConfigMaps and Secrets
    canary_has_pods: bool = False        # the target has pods or wants some (spec or status above zero)
    primary_revision: str | None = None  # revision the primary Deployment was last written with
    primary_ready: bool = False
    canary_ready: bool = False           # the target runs its replicas of target_revision, all Ready
    canary_available: bool = False       # the canary runs target_revision with at least one Ready pod and
    #                                      its rollout has not exceeded its progress deadline
    canary_unavailable_reason: str = ""  # why canary_available is False, for the failed check
    routed_weight: int | None = None     # the canary's weight in the route as read this tick (None: no route)
    routed_mirror: int = 0               # the share of requests the route mirrors to the canary, as read
    routed_cohorts: tuple[tuple[str, int], ...] | None = None  # each cohort rule's canary weight, as read
    mirror_problem: str | None = None    # why the route cannot mirror (spec.shadow.mirror: Route), if it cannot
    shadow_pairs: int | None = None      # judged pairs of mirrored requests since the shadow started (None: not asked)
    warnings: tuple[str, ...] | None = None  # other Services/routes that select the target's pods (None: not looked)
    problems: tuple[str, ...] = ()       # blocking problems of the environment (missing target, CRDs, ...)
    routing_available: bool = True       # the route can be written (its CRDs exist)
    requests: Requests = field(default_factory=Requests)
    checks: tuple[Check, ...] | None = None  # None: no analysis ran this tick
    comparisons: tuple[Check, ...] | None = None  # the comparison gates' checks, run every tick of a step
    evidence: tuple[Evidence, ...] | None = None  # the comparison gates' evidence after this tick's run


@dataclass(frozen=True)
class EnsurePrimary:
    """Make `<target>-primary` run the target's current pod template, recorded as `revision`."""

    revision: str


@dataclass(frozen=True)
class EnsureServices:
    pass


@dataclass(frozen=True)
class EnsureApex:
    """Point the Service named after the target (if canarist adopted it) at the primary's pods."""


@dataclass(frozen=True)
class SetRoute:
    primary: int
    canary: int
    mirror: int = 0  # percent of requests mirrored to the canary (their answers reach no user)
    cohorts: tuple[tuple[Cohort, int], ...] = ()  # each cohort's own rule, with its canary weight


@dataclass(frozen=True)
class ScaleCanary:
    """Scale the user's Deployment (the canary): 0, or the primary's replica count."""

    up: bool


Action = Union[EnsurePrimary, EnsureServices, EnsureApex, SetRoute, ScaleCanary]


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


@dataclass
class Decision:
    status: CanaryReleaseStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
