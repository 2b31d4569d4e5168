"""CanaryRelease status: everything the operator needs to resume after a restart lives here."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Literal

from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from .base import ApiModel
from .spec import Analysis, Cohort, Shadow


class Phase(str, Enum):
    INITIALIZING = "Initializing"  # creating the primary, Services and route
    IDLE = "Idle"                  # primary serves the target's revision, nothing to release
    SHADOWING = "Shadowing"        # the canary answers mirrored requests only; no user sees its answers
    PROGRESSING = "Progressing"    # a canary walks the steps
    PAUSED = "Paused"              # a rollout held by pause or spec.suspend
    PROMOTING = "Promoting"        # the canary passed; the primary is being updated to it
    SUCCEEDED = "Succeeded"        # the last rollout was promoted
    ROLLED_BACK = "RolledBack"     # the last rollout was rolled back; its revision waits for a new one or retry


class CheckResult(str, Enum):
    PASSED = "Passed"
    FAILED = "Failed"
    NO_DATA = "NoData"
    ERROR = "Error"


class StatusModel(ApiModel):
    # Status written by an older operator may carry fields this one no longer knows.
    model_config = ConfigDict(extra="ignore")


class TrackedConfig(StatusModel):
    """A ConfigMap or Secret the pod template references, as one revision has it."""

    kind: Literal["ConfigMap", "Secret"]
    name: str
    hash: str | None = Field(default=None, description=(
        "Hash of its content (a Secret's is keyed, so it reveals nothing of the value); absent: the "
        "object does not exist (an optional reference)."))


class Revisions(StatusModel):
    primary: str | None = Field(default=None, description=(
        "Revision the primary serves: a hash of the pod template and of the tracked ConfigMaps and Secrets."))
    canary: str | None = Field(default=None, description="Revision of the rollout in progress or last rolled out.")
    primary_template: str | None = Field(default=None, description="Pod template hash of the primary's revision.")
    canary_template: str | None = Field(default=None, description="Pod template hash of the canary's revision.")
    primary_config: list[TrackedConfig] | None = Field(default=None, description=(
        "The tracked ConfigMaps and Secrets of the primary's revision (the primary runs on <name>-primary copies)."))
    canary_config: list[TrackedConfig] | None = Field(default=None, description=(
        "The tracked ConfigMaps and Secrets of the canary's revision."))
    changes: list[str] = Field(default_factory=list, description=(
        "What the canary's revision changes against the primary's: the pod template, tracked objects by name."))


class Check(StatusModel):
    name: str
    kind: Literal["prometheus", "samples", "judge", "workload", "compare"] = "prometheus"
    result: CheckResult
    value: float | None = None
    min: float | None = None
    max: float | None = None
    message: str = ""
    at: datetime
    cohort: str | None = Field(default=None, description="The cohort this check judged alone; absent: all traffic.")

    def for_cohort(self, cohort: str) -> "Check":
        """This check as one cohort's: named `<name>[<cohort>]`."""
        return self.model_copy(update={"name": f"{self.name}[{cohort}]", "cohort": cohort})

    def describe(self) -> str:
        bounds = " and ".join(p for p in (
            f">= {self.min:g}" if self.min is not None else "",
            f"<= {self.max:g}" if self.max is not None else "") if p)
        value = "no value" if self.value is None else f"{self.value:g}"
        text = f"{self.name}={value}"
        if bounds:
            text += f" (want {bounds})"
        return f"{text}: {self.message}" if self.message else text


class Evidence(StatusModel):
    """Where one comparison gate stands: the estimate, its confidence interval and the evidence
    toward each decision (e-values; a decision needs `threshold`)."""

    name: str
    kind: Literal["rates", "judge"]
    measure: Literal["ratio", "scoreDrop", "lossShare"] = Field(description=(
        "ratio: the canary's rate of bad events over the primary's; scoreDrop: the primary's mean score "
        "minus the canary's on the same inputs; lossShare: the share of head-to-head comparisons the canary lost."))
    tolerance: float
    estimate: float | None = None
    low: float | None = Field(default=None, description="Lower end of the (1 - alpha) confidence interval.")
    high: float | None = Field(default=None, description="Upper end; absent when there is no upper bound yet.")
    rollback: float = Field(default=1.0, description="Evidence that the canary is worse than the tolerance.")
    promote: float = Field(default=1.0, description="Evidence that the canary is within the tolerance.")
    threshold: float = Field(description="What either evidence must reach: (number of comparison gates) / alpha.")
    verdict: Literal["Regression", "WithinTolerance", "Undecided"] = "Undecided"
    step_max_ratio: float | None = Field(default=None, description=(
        "Rates gates: the step guard's bound (stepMaxRatio)."))
    step_evidence: float | None = Field(default=None, description=(
        "Rates gates: evidence that the ratio is below stepMaxRatio; a step after the first widens only once "
        "it reaches stepThreshold."))
    step_threshold: float | None = None
    canary_events: float = Field(default=0, description="Canary requests (rates) or judged pairs (judge) so far.")
    needs: str = Field(default="", description="What a decision still waits for, roughly.")
    at: datetime | None = None
    state: dict[str, Any] = Field(default_factory=dict, description=(
        "The sequential test's running state, so the evidence survives an operator restart."))


class ShadowStatus(StatusModel):
    """The shadow phase of the rollout in progress or last rolled out."""

    state: Literal["Running", "Passed", "Failed", "Skipped"] = Field(default="Running", description=(
        "Skipped: left without a verdict (promoted by a person, or the rollout cancelled)."))
    percent: int = Field(description="Share of requests mirrored to the canary.")
    mirror: Literal["Route", "External"] = "Route"
    started_at: datetime | None = Field(default=None, description=(
        "When the mirror was seen in the route (External: when the canary became Ready); its checks count from here."))
    finished_at: datetime | None = None
    pairs: int | None = Field(default=None, description="Judged pairs of mirrored requests so far.")
    checks: list[Check] = Field(default_factory=list, description="The shadow's last checks: its verdicts.")


class CohortStatus(StatusModel):
    """One cohort of the rollout in progress or last rolled out."""

    name: str
    canary_weight: int = Field(default=0, description="The cohort's canary share in the route, as read.")
    judged: int | None = Field(default=None, description=(
        "Judged canary samples of the cohort in its step, at the last check (the judge's coverage); absent: not "
        "asked yet."))
    min_samples: int | None = Field(default=None, description="Judged samples each step needs (spec minSamples).")


class PendingEvent(StatusModel):
    """An Event of the last transition, recorded with it so that it is posted exactly once even when
    the operator dies between writing the status and posting it (its name comes from `key`)."""

    key: str
    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


class Condition(StatusModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: datetime
    observed_generation: int | None = None


class CanaryReleaseStatus(StatusModel):
    phase: Phase | None = None
    message: str = ""
    canary_weight: int = Field(default=0, description=(
        "The canary's weight in the route as last written and confirmed: what users actually get."))
    step_weight: int = Field(default=0, description=(
        "The weight the current step asks for; 0 while waiting for the canary or steady."))
    step_index: int = 0
    revisions: Revisions = Field(default_factory=Revisions)
    pinned_steps: list[int] | None = Field(default=None, description="Steps in force for the rollout in progress.")
    pinned_analysis: Analysis | None = Field(default=None, description="Analysis in force for the rollout in progress.")
    pinned_shadow: Shadow | None = Field(default=None, description="Shadow phase in force for the rollout in progress.")
    shadow: ShadowStatus | None = Field(default=None, description="Where the rollout's shadow phase stands.")
    pinned_cohorts: list[Cohort] | None = Field(default=None, max_length=8, description=(
        "Cohorts in force for the rollout in progress."))
    cohorts: list[CohortStatus] = Field(default_factory=list, max_length=8, description=(
        "Each cohort's canary share and judged coverage; its checks are in lastChecks (with cohort set)."))
    rollout_started_at: datetime | None = None
    step_started_at: datetime | None = None
    hold_started_at: datetime | None = Field(default=None, description=(
        "When holdTimeout started counting for the current step; moved forward by time spent paused or blocked."))
    blocked_since: datetime | None = Field(default=None, description=(
        "Since when the release is blocked or paused mid-rollout (that time does not count against holdTimeout)."))
    last_check_at: datetime | None = None
    checks_passed: int = Field(default=0, description="Passed checks in the current step.")
    checks_failed: int = Field(default=0, description="Failed checks in the current step.")
    checks_inconclusive: int = Field(default=0, description="Checks in the current step with no data or a provider error.")
    provider_errors: int = Field(default=0, description="Provider errors in the current step.")
    last_checks: list[Check] = Field(default_factory=list)
    evidence: list[Evidence] = Field(default_factory=list, description=(
        "The comparison gates' evidence, accumulated over the whole rollout."))
    restarting_canary: bool = Field(default=False, description=(
        "The canary's pods are being replaced (scaled to zero and up) because only tracked configuration "
        "changed mid-rollout, which running pods would not read."))
    awaiting_decision: bool = Field(default=False, description=(
        "holdTimeout passed with onHoldTimeout: Pause; the rollout waits for promote or abort."))
    rolled_back_revision: str | None = None
    handled_requests: dict[str, str] = Field(default_factory=dict, description=(
        "The last request token acted on per manual action, so one request acts once."))
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    pending_events: list[PendingEvent] = Field(default_factory=list, description=(
        "Events of the last transition; posted after the status write that records it, again by the "
        "next tick if the operator died in between, then cleared."))

    @model_validator(mode="before")
    @classmethod
    def _step_weight_from_older_status(cls, data: Any) -> Any:
        # A status written before stepWeight existed kept the step's weight in canaryWeight.
        if isinstance(data, dict) and "stepWeight" not in data and "step_weight" not in data:
            weight = data.get("canaryWeight", data.get("canary_weight"))
            if weight is not None:
                data = {**data, "stepWeight": weight}
        return data

    @field_validator("pinned_analysis", mode="before")
    @classmethod
    def _lenient_pinned_analysis(cls, value: Any) -> Any:
        """A status written by a newer operator may pin fields this one does not know: they are
        dropped (recursively) instead of failing every tick. What this operator knows still binds."""
        if not isinstance(value, dict):
            return value
        return _known_fields(Analysis, value)

    @field_validator("pinned_shadow", mode="before")
    @classmethod
    def _lenient_pinned_shadow(cls, value: Any) -> Any:
        return _known_fields(Shadow, value) if isinstance(value, dict) else value

    @field_validator("pinned_cohorts", mode="before")
    @classmethod
    def _lenient_pinned_cohorts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [_known_fields(Cohort, v) if isinstance(v, dict) else v for v in value]


def _known_fields(model: type[ApiModel], data: dict) -> dict:
    known: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in data:
            continue
        value = data[key]
        inner = _model_of(info.annotation)
        if inner is not None and isinstance(value, dict):
            value = _known_fields(inner, value)
        elif inner is not None and isinstance(value, list):
            value = [_known_fields(inner, v) if isinstance(v, dict) else v for v in value]
        known[key] = value
    return known


def _model_of(annotation: Any) -> type[ApiModel] | None:
    """The ApiModel inside `X`, `X | None` or `list[X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, ApiModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None
