"""CanaryRelease spec (canarist.dev/v1alpha1).

The CRD's OpenAPI schema is generated from these models (canarist.api.crd), so what
`kubectl apply` rejects and what the operator rejects agree. Rules the schema cannot express
as types are given twice: a pydantic validator for Python, and a CEL rule
(`x-kubernetes-validations`) for the API server, with the same message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import ApiModel
from .durations import DURATION_PATTERN

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DEFAULT_STEPS = [1, 5, 20, 50, 100]

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, json_schema_extra={"example": "1m"})]


def _cel(rule: str, message: str, field_path: str | None = None) -> dict:
    validation = {"rule": rule, "message": message}
    if field_path:
        validation["fieldPath"] = field_path
    return validation


class TargetRef(ApiModel):
    """The user's Deployment: the source of truth, and the canary during a rollout."""

    api_version: Literal["apps/v1"] = "apps/v1"
    kind: Literal["Deployment"] = "Deployment"
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


class ServiceSpec(ApiModel):
    port: int = Field(ge=1, le=65535, description="Port the generated Services expose.")
    target_port: int | None = Field(default=None, ge=1, le=65535,
                                    description="Container port; defaults to port.")


class ParentReference(ApiModel):
    """A Gateway API parentRef (usually a Gateway) the generated HTTPRoute attaches to."""

    group: str | None = None
    kind: str | None = None
    namespace: str | None = Field(default=None, pattern=DNS_LABEL, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    section_name: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)


class GatewayAPIRouting(ApiModel):
    parent_refs: list[ParentReference] = Field(min_length=1, max_length=32)
    hostnames: list[str] = Field(default_factory=list, max_length=16)
    matches: list[dict[str, Any]] = Field(
        default_factory=list, max_length=8,
        description="Gateway API HTTPRouteMatch objects; empty matches all requests.",
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )


class Routing(ApiModel):
    gateway_api: GatewayAPIRouting = Field(alias="gatewayAPI")


class PrometheusQuery(ApiModel):
    query: str = Field(min_length=1, description=(
        "PromQL template. Variables: {{ namespace }}, {{ target }}, {{ primary }}, {{ canary }}, "
        "{{ interval }}."))
    address: str | None = Field(default=None, pattern=r"^https?://",
                                description="Prometheus base URL; overrides the operator's default.")


class MetricGate(ApiModel):
    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    prometheus: PrometheusQuery
    min: float | None = Field(default=None, description="The check fails when the value is below this.")
    max: float | None = Field(default=None, description="The check fails when the value is above this.")

    model_config = {"json_schema_extra": {"x-kubernetes-validations": [
        _cel("has(self.min) || has(self.max)", "set min, max or both: a metric without a threshold checks nothing"),
        _cel("!has(self.min) || !has(self.max) || self.min <= self.max", "min must not be greater than max"),
    ]}}

    @model_validator(mode="after")
    def _thresholds(self) -> "MetricGate":
        if self.min is None and self.max is None:
            raise ValueError("set min, max or both: a metric without a threshold checks nothing")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not be greater than max")
        return self


class SampleRule(ApiModel):
    """Evidence required before a check may count: how many requests the canary served."""

    query: str = Field(min_length=1, description="PromQL template returning the canary's request count in the interval.")
    count: int = Field(ge=1, description="Fewer samples than this makes a check inconclusive (the step holds).")
    address: str | None = Field(default=None, pattern=r"^https?://")


class JudgeGate(ApiModel):
    """Answer quality from the judge service (docs/judge-protocol.md), judged per step."""

    url: str = Field(pattern=r"^https?://", description="Base URL of the judge service.")
    min_score: float | None = Field(default=None, ge=0, le=1, description="Minimum canary mean score.")
    max_regression: float | None = Field(default=None, ge=0, le=1, description=(
        "How far the canary's mean score may trail the primary's."))
    max_loss_rate: float | None = Field(default=None, ge=0, le=1, description=(
        "Maximum share of pairwise comparisons the canary loses to the primary."))
    min_samples: int = Field(default=20, ge=1, le=100000, description=(
        "Judged canary samples each step needs before its judge checks count; fewer holds the step."))
    timeout: Duration = Field(default="10s", description="Timeout of one verdict query.")

    model_config = {"json_schema_extra": {"x-kubernetes-validations": [
        _cel("has(self.minScore) || has(self.maxRegression) || has(self.maxLossRate)",
             "set minScore, maxRegression or maxLossRate: a judge gate without a threshold checks nothing"),
    ]}}

    @model_validator(mode="after")
    def _thresholds(self) -> "JudgeGate":
        if self.min_score is None and self.max_regression is None and self.max_loss_rate is None:
            raise ValueError("set minScore, maxRegression or maxLossRate: a judge gate without a threshold "
                             "checks nothing")
        return self


class Analysis(ApiModel):
    interval: Duration = Field(default="1m", description="Time between checks.")
    failure_limit: int = Field(default=1, ge=0, le=100, description=(
        "Failed checks tolerated within one step; the next failed check rolls back. 0 rolls back on the first."))
    checks_per_step: int = Field(default=1, ge=1, le=100, description=(
        "Passed checks each step needs before it advances."))
    min_samples: SampleRule | None = None
    on_no_data: Literal["Hold", "Fail"] = Field(default="Hold", description=(
        "A check with no data (empty result, NaN, too few samples): Hold keeps the step, Fail counts a failed check."))
    on_error: Literal["Hold", "Fail"] = Field(default="Hold", description=(
        "A provider error (Prometheus unreachable, query error): Hold keeps the step, Fail counts a failed check."))
    hold_timeout: Duration | None = Field(default=None, description=(
        "Roll back when one step has not advanced for this long (no evidence either way). Unset: hold forever."))
    metrics: list[MetricGate] = Field(default_factory=list, max_length=32, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    judge: JudgeGate | None = None

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, metrics: list[MetricGate]) -> list[MetricGate]:
        names = [m.name for m in metrics]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"metric names must be unique; repeated: {', '.join(duplicates)}")
        return metrics


STEPS_RULES = [
    _cel("self[size(self) - 1] == 100", "steps must end at 100"),
    _cel("self.isSorted()", "steps must increase"),
]


class CanaryReleaseSpec(ApiModel):
    # Everything canarist creates is named after the target: switching targets would strand the
    # old route and canary. A new target is a new CanaryRelease.
    model_config = {"json_schema_extra": {"x-kubernetes-validations": [
        _cel("self.targetRef.name == oldSelf.targetRef.name",
             "targetRef.name is immutable; create a new CanaryRelease for another Deployment"),
    ]}}

    target_ref: TargetRef
    service: ServiceSpec
    routing: Routing
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: list(DEFAULT_STEPS), min_length=1, max_length=20,
        description="Canary traffic percentages, increasing, ending at 100.",
        json_schema_extra={"x-kubernetes-list-type": "set", "x-kubernetes-validations": STEPS_RULES,
                           "default": DEFAULT_STEPS},
    )
    # The explicit {} default lets the API server fill in the nested defaults when analysis is omitted.
    analysis: Analysis = Field(default_factory=Analysis, json_schema_extra={"default": {}})
    suspend: bool = Field(default=False, description="Hold everything: no new rollout starts and a running one pauses.")

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if steps[-1] != 100:
            raise ValueError("steps must end at 100")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError("steps must increase")
        return steps
