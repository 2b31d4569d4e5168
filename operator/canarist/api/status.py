"""CanaryRelease status: everything the operator needs to resume after a restart lives here."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Literal

from pydantic import ConfigDict, Field

from .base import ApiModel
from .spec import Analysis


class Phase(str, Enum):
    INITIALIZING = "Initializing"  # creating the primary, Services and route
    IDLE = "Idle"                  # primary serves the target's revision, nothing to release
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


class Revisions(StatusModel):
    primary: str | None = Field(default=None, description="Pod template hash the primary serves.")
    canary: str | None = Field(default=None, description="Pod template hash of the rollout in progress or last rolled out.")


class Check(StatusModel):
    name: str
    kind: Literal["prometheus", "samples", "judge", "workload"] = "prometheus"
    result: CheckResult
    value: float | None = None
    min: float | None = None
    max: float | None = None
    message: str = ""
    at: datetime

    def describe(self) -> str:
        bounds = " and ".join(p for p in (
            f">= {self.min:g}" if self.min is not None else "",
            f"<= {self.max:g}" if self.max is not None else "") if p)
        value = "no value" if self.value is None else f"{self.value:g}"
        text = f"{self.name}={value}"
        if bounds:
            text += f" (want {bounds})"
        return f"{text}: {self.message}" if self.message else text


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
    canary_weight: int = 0
    step_index: int = 0
    revisions: Revisions = Field(default_factory=Revisions)
    pinned_steps: list[int] | None = Field(default=None, description="Steps in force for the rollout in progress.")
    pinned_analysis: Analysis | None = Field(default=None, description="Analysis in force for the rollout in progress.")
    rollout_started_at: datetime | None = None
    step_started_at: datetime | None = None
    last_check_at: datetime | None = None
    checks_passed: int = Field(default=0, description="Passed checks in the current step.")
    checks_failed: int = Field(default=0, description="Failed checks in the current step.")
    checks_inconclusive: int = Field(default=0, description="Checks in the current step with no data or a provider error.")
    provider_errors: int = Field(default=0, description="Provider errors in the current step.")
    last_checks: list[Check] = Field(default_factory=list)
    rolled_back_revision: str | None = None
    handled_requests: dict[str, str] = Field(default_factory=dict, description=(
        "The last request token acted on per manual action, so one request acts once."))
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
