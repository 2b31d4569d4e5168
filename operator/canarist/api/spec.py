"""CanaryRelease spec (canarist.dev/v1alpha1).

The CRD's OpenAPI schema is generated from these models (canarist.api.crd), so what
`kubectl apply` rejects and what the operator rejects agree. Rules the schema cannot express
as types are given twice: a pydantic validator for Python, and a CEL rule
(`x-kubernetes-validations`) for the API server, with the same message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler, field_validator, model_validator
from pydantic_core import CoreSchema, core_schema

from .base import ApiModel
from .compare import Comparison
from .durations import DURATION_PATTERN, parse_duration
from .gatewayapi import HTTPHeaderMatch, HTTPQueryParamMatch, Hostname, ParentReference, RouteMatch, unique_names

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Service names are DNS-1035 labels (<= 63, starting with a letter); "-primary" adds 8.
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
TARGET_NAME_MAX = 55
TARGET_NAME_MESSAGE = (
    f"targetRef.name must be a DNS-1035 label of at most {TARGET_NAME_MAX} characters (lowercase letters, "
    "digits and '-', starting with a letter and ending with a letter or digit): canarist creates the "
    "<name>-primary and <name>-canary Services and the <name>-primary Deployment; rename the Deployment")
DEFAULT_STEPS = [1, 5, 20, 50, 100]
# Bounds the CEL cost of duration(self); real durations are a dozen characters.
_DURATION_MAX_LENGTH = 32

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=_DURATION_MAX_LENGTH,
                                json_schema_extra={"example": "1m"})]


def _cel(rule: str, message: str, field_path: str | None = None) -> dict:
    validation = {"rule": rule, "message": message}
    if field_path:
        validation["fieldPath"] = field_path
    return validation


@dataclass(frozen=True)
class _Above:
    """Annotation: a Duration of at least (inclusive) or more than `minimum`, for pydantic and CEL."""

    minimum: str
    message: str
    inclusive: bool

    def _check(self, text: str) -> str:
        value, bound = parse_duration(text), parse_duration(self.minimum)
        if value < bound or (value == bound and not self.inclusive):
            raise ValueError(self.message)
        return text

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        # A malformed duration is reported by the pattern; the guard spares the user a second,
        # cryptic "type conversion error" from duration().
        rule = (f"!self.matches(r'{DURATION_PATTERN}') || "
                f"duration(self) {'>=' if self.inclusive else '>'} duration('{self.minimum}')")
        return {**handler(schema), "x-kubernetes-validations": [_cel(rule, self.message)]}


INTERVAL_MESSAGE = ("analysis.interval must be at least 1s (e.g. 30s or 1m): it is the time between checks and "
                    "the {{ interval }} window of the PromQL queries, which is counted in whole seconds")
HOLD_TIMEOUT_MESSAGE = "analysis.holdTimeout must be greater than 0s; leave it unset to hold without a time limit"
JUDGE_TIMEOUT_MESSAGE = ("analysis.judge.timeout must be greater than 0s: it is how long one verdict query may "
                         "take (default 10s)")
Interval = Annotated[Duration, _Above("1s", INTERVAL_MESSAGE, inclusive=True)]
HoldTimeout = Annotated[Duration, _Above("0s", HOLD_TIMEOUT_MESSAGE, inclusive=False)]
JudgeTimeout = Annotated[Duration, _Above("0s", JUDGE_TIMEOUT_MESSAGE, inclusive=False)]


def _named_once(items: list, what: str) -> list:
    """`items` (objects with a name), refused when a name repeats."""
    names = [item.name for item in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")
    return items


class TargetRef(ApiModel):
    """The user's Deployment: the source of truth, and the canary during a rollout."""

    api_version: Literal["apps/v1"] = "apps/v1"
    kind: Literal["Deployment"] = "Deployment"
    # maxLength 253 (any Kubernetes name) only bounds the CEL rule's cost; the rule gives the real limit.
    name: str = Field(min_length=1, max_length=253, json_schema_extra={"x-kubernetes-validations": [
        _cel(f"self.size() <= {TARGET_NAME_MAX} && self.matches('{DNS_1035_LABEL}')", TARGET_NAME_MESSAGE)]})

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if len(name) > TARGET_NAME_MAX or not re.fullmatch(DNS_1035_LABEL, name):
            raise ValueError(TARGET_NAME_MESSAGE)
        return name


class ServiceSpec(ApiModel):
    port: int = Field(ge=1, le=65535, description="Port the generated Services expose.")
    target_port: int | None = Field(default=None, ge=1, le=65535,
                                    description="Container port; defaults to port.")
    adopt_target_service: bool = Field(default=True, description=(
        "A Service named after the target that selects the target's pods is pointed at the primary's pods "
        "while canarist manages this release (restored when the CanaryRelease is deleted), so clients of "
        "that Service keep being served while the target is scaled to zero. false leaves it alone."))


class GatewayAPIRouting(ApiModel):
    parent_refs: list[ParentReference] = Field(min_length=1, max_length=32)
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)
    matches: list[RouteMatch] = Field(
        default_factory=list, max_length=8,
        description="Gateway API HTTPRouteMatch objects; empty matches all requests.")


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
    timeout: JudgeTimeout = Field(default="10s", description="Timeout of one verdict query.")

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
    interval: Interval = Field(default="1m", description="Time between checks; at least 1s.")
    failure_limit: int = Field(default=1, ge=0, le=100, description=(
        "Failed checks tolerated within one step; the next failed check rolls back. 0 rolls back on the first."))
    checks_per_step: int = Field(default=1, ge=1, le=100, description=(
        "Passed checks each step needs before it advances."))
    min_samples: SampleRule | None = None
    on_no_data: Literal["Hold", "Fail"] = Field(default="Hold", description=(
        "A check with no data (empty result, NaN, too few samples): Hold keeps the step, Fail counts a failed check."))
    on_error: Literal["Hold", "Fail"] = Field(default="Hold", description=(
        "A provider error (Prometheus unreachable, query error): Hold keeps the step, Fail counts a failed check."))
    hold_timeout: HoldTimeout | None = Field(default=None, description=(
        "Roll back when one step has not advanced for this long (no evidence either way). Unset: hold forever."))
    metrics: list[MetricGate] = Field(default_factory=list, max_length=32, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    judge: JudgeGate | None = None
    compare: list[Comparison] = Field(default_factory=list, max_length=16, description=(
        "Comparison gates: the canary against the primary over the same period, tested sequentially "
        "(anytime-valid) against each gate's tolerance."),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    alpha: float = Field(default=0.01, gt=0, le=0.5, description=(
        "1 - confidence of the comparison gates' decisions, for the whole rollout and all of them together: "
        "the chance of rolling back a canary within every tolerance, or of promoting one worse than a "
        "tolerance, is at most alpha."))
    on_hold_timeout: Literal["Rollback", "Pause"] = Field(default="Rollback", description=(
        "When holdTimeout passes without a decision: roll back, or pause for a person to promote or abort."))

    @field_validator("metrics", "compare")
    @classmethod
    def _unique_names(cls, gates: list) -> list:
        return _named_once(gates, "gate")


class Shadow(ApiModel):
    """Before the first step, the canary answers a mirrored copy of real requests: the primary answers
    every user, the canary's answers are discarded for the user and judged against the primary's
    answers to the very same requests. A failing shadow rolls back before any user sees the canary."""

    percent: int = Field(default=100, ge=1, le=100, description=(
        "Share of requests mirrored to the canary, 1 to 100. Lower it to bound the canary's load and the "
        "judge's cost; the judge's sample rate and token budget apply to mirrored answers too."))
    min_duration: Duration = Field(default="5m", description=(
        "Shortest shadow phase: the first step starts no earlier, however fast the checks pass."))
    min_pairs: int = Field(default=20, ge=0, le=1_000_000, description=(
        "Judged pairs (the primary's and the canary's answer to the same mirrored request) the shadow "
        "needs before it can pass; counted by the judge gate's service. 0: no pairs needed."))
    mirror: Literal["Route", "External"] = Field(default="Route", description=(
        "Route: canarist adds a RequestMirror filter to the HTTPRoute (needs a Gateway whose GatewayClass "
        "lists the HTTPRouteRequestMirror feature; canarist checks it and never writes a filter the gateway "
        "would refuse). External: something else mirrors requests to the <target>-canary Service (a mesh, a "
        "gateway of your own); canarist only scales the canary up and judges."))
    analysis: Analysis | None = Field(default=None, description=(
        "The gates that decide the shadow phase; default spec.analysis, evaluated on the mirrored traffic."))


# The gateway sets this header on the requests a cohort's rule matched (and removes it from all
# others), so the application and its reporter learn the segment the way the route matched it.
COHORT_HEADER = "X-Canarist-Cohort"
COHORT_MATCH_EMPTY = ("a cohort match needs at least one header or query parameter: an empty match is all "
                      "traffic, which is what spec.steps already routes")
COHORT_SPLIT_MESSAGE = ("set exactly one of factor (a multiple of each step's share) and steps (the cohort's own "
                        "share at each step)")


class CohortMatch(ApiModel):
    """Gateway API HTTPRouteMatch conditions on headers and query parameters; all of them must hold.
    The route's own matches (spec.routing.gatewayAPI.matches: paths, methods) apply to cohorts too."""

    headers: list[HTTPHeaderMatch] | None = Field(default=None, max_length=16, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    query_params: list[HTTPQueryParamMatch] | None = Field(default=None, max_length=16, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})

    model_config = {"json_schema_extra": {"x-kubernetes-validations": [
        _cel("(has(self.headers) && size(self.headers) > 0) || (has(self.queryParams) && size(self.queryParams) > 0)",
             COHORT_MATCH_EMPTY),
    ]}}

    @field_validator("headers", "query_params")
    @classmethod
    def _unique(cls, items: list | None) -> list | None:
        return items if items is None else unique_names(items, fold_case=True)

    @model_validator(mode="after")
    def _not_empty(self) -> "CohortMatch":
        if not self.headers and not self.query_params:
            raise ValueError(COHORT_MATCH_EMPTY)
        if any(h.name.lower() == COHORT_HEADER.lower() for h in self.headers or ()):
            raise ValueError(f"{COHORT_HEADER} is set by canarist's route; match on the headers clients send")
        return self


class Cohort(ApiModel):
    """A segment of traffic that historically breaks (a language, mobile clients, long sessions): it gets
    more of the canary than the rest at each step, and its own verdicts."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description=(
        "Names the cohort in checks, status and the judge's segments (the X-Canarist-Cohort header)."))
    matches: list[CohortMatch] = Field(min_length=1, max_length=8, description=(
        "A request in any of these matches is in the cohort."))
    factor: float | None = Field(default=None, ge=1, le=100, description=(
        "The cohort's canary share is this many times the step's, capped at 100 (factor 5: 5 % at the 1 % step)."))
    steps: list[Annotated[int, Field(ge=1, le=100)]] | None = Field(default=None, max_length=20, description=(
        "The cohort's own canary share at each step of spec.steps (one entry per step, none below the step's "
        "share, never decreasing, ending at 100)."))
    min_samples: int | None = Field(default=None, ge=1, le=100000, description=(
        "Judged canary samples of this cohort each step needs: the step holds until it has them. Unset: the "
        "cohort's verdicts count once it has analysis.judge.minSamples, and too little of it never holds a step."))

    model_config = {"json_schema_extra": {"x-kubernetes-validations": [
        _cel("has(self.factor) != has(self.steps)", COHORT_SPLIT_MESSAGE),
        _cel("!has(self.steps) || (self.steps.isSorted() && self.steps[size(self.steps) - 1] == 100)",
             "a cohort's steps must not decrease and must end at 100"),
    ]}}

    @model_validator(mode="after")
    def _split(self) -> "Cohort":
        if (self.factor is None) == (self.steps is None):
            raise ValueError(COHORT_SPLIT_MESSAGE)
        if self.steps is not None and (self.steps[-1] != 100 or any(b < a for a, b in zip(self.steps, self.steps[1:]))):
            raise ValueError("a cohort's steps must not decrease and must end at 100")
        return self


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
        _cel("!has(self.cohorts) || self.cohorts.all(c, !has(c.steps) || size(c.steps) == size(self.steps))",
             "a cohort's steps need one entry per entry of spec.steps", ".cohorts"),
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
    shadow: Shadow | None = Field(default=None, description=(
        "Optional phase before the first step: the canary answers mirrored requests that no user sees, "
        "judged against the primary's answers to the same requests."))
    cohorts: list[Cohort] = Field(default_factory=list, max_length=8, description=(
        "Segments that get a larger canary share than the rest at each step, each judged on its own: a cohort "
        "that fails fails the check even when all traffic together passes. Traffic in no cohort follows steps."),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    suspend: bool = Field(default=False, description="Hold everything: no new rollout starts and a running one pauses.")

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if steps[-1] != 100:
            raise ValueError("steps must end at 100")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError("steps must increase")
        return steps

    @field_validator("cohorts")
    @classmethod
    def _cohort_names(cls, cohorts: list[Cohort]) -> list[Cohort]:
        return _named_once(cohorts, "cohort")

    @model_validator(mode="after")
    def _cohort_steps(self) -> "CanaryReleaseSpec":
        for i, cohort in enumerate(self.cohorts):
            if cohort.steps is None:
                continue
            if len(cohort.steps) != len(self.steps):
                raise ValueError(f"spec.cohorts[{i}].steps ({cohort.name}) has {len(cohort.steps)} entries and "
                                 f"spec.steps {len(self.steps)}; give the cohort's share at every step")
            below = [f"{c}% at the {s}% step" for c, s in zip(cohort.steps, self.steps) if c < s]
            if below:
                raise ValueError(f"spec.cohorts[{i}].steps ({cohort.name}) gives the cohort less than the rest: "
                                 f"{', '.join(below)}; a cohort's share is at least the step's")
        return self
