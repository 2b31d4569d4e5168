"""What the engine reads (World) and what it asks for (Decision: actions, events, new status)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from canarist.api.status import CanaryReleaseStatus, Check


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

    target_revision: str | None          # pod template hash of the user's Deployment; None if it is missing
    primary_revision: str | None = None  # revision the primary Deployment was last written with
    primary_ready: bool = False
    canary_ready: bool = False           # the target runs its replicas of target_revision, all Ready
    problems: tuple[str, ...] = ()       # blocking problems of the environment (missing target, CRDs, ...)
    routing_available: bool = True       # the route can be written (its CRDs exist)
    requests: Requests = field(default_factory=Requests)
    checks: tuple[Check, ...] | None = None  # None: no analysis ran this tick


@dataclass(frozen=True)
class EnsurePrimary:
    """Make `<target>-primary` run the target's current pod template, recorded as `revision`."""

    revision: str


@dataclass(frozen=True)
class EnsureServices:
    pass


@dataclass(frozen=True)
class SetRoute:
    primary: int
    canary: int


@dataclass(frozen=True)
class ScaleCanary:
    """Scale the user's Deployment (the canary): 0, or the primary's replica count."""

    up: bool


Action = Union[EnsurePrimary, EnsureServices, SetRoute, ScaleCanary]


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
