"""Comparison gates: the canary judged against the primary over the same period, with anytime-valid
statistics (canarist.analysis.sequential), instead of one value against a fixed threshold.

Each gate states its tolerance in the user's terms; `analysis.alpha` is the confidence of the
whole rollout. The rule, stated once: roll back as soon as the evidence shows, at confidence
1 - alpha, that the canary is worse than a gate's tolerance allows; promote (leave the last step
below 100 %) only when it shows, at the same confidence, that every gate is within tolerance;
otherwise hold, up to holdTimeout.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, model_validator

from .base import ApiModel

COMPARE_VARIABLES = ("variant", "window")
STEP_GUARD_FACTOR = 5 / 3  # stepMaxRatio's default, as a multiple of maxRatio
STEP_GUARD_CONFIDENCE = 0.8  # the step guard's level (canarist.analysis.sequential.STEP_BETA = 1 - it)
_VARIANT = re.compile(r"\{\{\s*variant\s*\}\}")


def _cel(rule: str, message: str) -> dict:
    return {"rule": rule, "message": message}


PromQL = Annotated[str, Field(min_length=1, max_length=4096)]


class RateComparison(ApiModel):
    """Bad events among all events, from two Prometheus counters per variant (errors among requests,
    requests slower than an SLO from histogram buckets, refusals, any bad counter over a total)."""

    bad: PromQL = Field(description=(
        "PromQL template: how many bad events {{ variant }} had during {{ window }}, e.g. "
        "sum(increase(http_requests_total{deployment=\"{{ variant }}\",code=~\"5..\"}[{{ window }}])). "
        "{{ variant }} is the variant's Deployment (<target> for the canary, <target>-primary for the "
        "primary); {{ window }} runs from the start of the rollout to now."))
    total: PromQL = Field(description="PromQL template: how many events {{ variant }} had during {{ window }}.")
    max_ratio: float = Field(gt=1, le=100, description=(
        "Tolerance: the canary's rate of bad events may be at most this many times the primary's (e.g. 1.2). "
        "Above 1: a canary exactly as good as the primary must be able to pass."))
    step_max_ratio: float | None = Field(default=None, gt=1, le=400, description=(
        "Step guard: a step after the first gives the canary more traffic only once the evidence shows, at "
        f"{STEP_GUARD_CONFIDENCE:.0%} confidence, that its ratio is below this. It keeps a bad canary at a small "
        "share while the evidence for its rollback comes in. Above maxRatio; default 5/3 of maxRatio."))
    address: str | None = Field(default=None, pattern=r"^https?://",
                                description="Prometheus base URL; overrides the operator's default.")

    model_config = {"json_schema_extra": {"x-kubernetes-validations": [
        _cel("!has(self.stepMaxRatio) || self.stepMaxRatio > self.maxRatio",
             "stepMaxRatio must be above maxRatio: it is the looser bound a step checks before widening"),
    ]}}

    @model_validator(mode="after")
    def _guard_above_tolerance(self) -> "RateComparison":
        if self.step_max_ratio is not None and self.step_max_ratio <= self.max_ratio:
            raise ValueError(f"stepMaxRatio ({self.step_max_ratio:g}) must be above maxRatio ({self.max_ratio:g}): "
                             "it is the looser bound a step checks before widening; raise it or leave it out")
        return self

    @property
    def step_guard(self) -> float:
        return self.step_max_ratio if self.step_max_ratio is not None else round(self.max_ratio * STEP_GUARD_FACTOR, 4)


class QualityComparison(ApiModel):
    """Answer quality from the judge, paired on the same inputs: both variants' answers to one input."""

    url: str = Field(pattern=r"^https?://", description="Base URL of the judge service.")
    max_score_drop: float | None = Field(default=None, gt=0, lt=1, description=(
        "Tolerance: the canary's mean score may trail the primary's, on the same inputs, by at most this."))
    max_loss_share: float | None = Field(default=None, gt=0.5, lt=1, description=(
        "Tolerance: the share of head-to-head comparisons the canary may lose (ties count half). Above 0.5: "
        "a canary exactly as good as the primary must be able to pass."))
    timeout: str = Field(default="10s", pattern=r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")

    model_config = {"json_schema_extra": {"x-kubernetes-validations": [
        _cel("has(self.maxScoreDrop) != has(self.maxLossShare)",
             "set exactly one of maxScoreDrop or maxLossShare (one tolerance per comparison gate)"),
    ]}}

    @model_validator(mode="after")
    def _one_tolerance(self) -> "QualityComparison":
        if (self.max_score_drop is None) == (self.max_loss_share is None):
            raise ValueError("set exactly one of maxScoreDrop or maxLossShare (one tolerance per comparison gate)")
        return self


class Comparison(ApiModel):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    rates: RateComparison | None = None
    judge: QualityComparison | None = None

    model_config = {"json_schema_extra": {"x-kubernetes-validations": [
        _cel("has(self.rates) != has(self.judge)", "set exactly one of rates or judge"),
        _cel("!has(self.rates) || (self.rates.bad.matches('[{][{]\\\\s*variant\\\\s*[}][}]') && "
             "self.rates.total.matches('[{][{]\\\\s*variant\\\\s*[}][}]'))",
             "rates.bad and rates.total must use {{ variant }}: the same query is asked of the canary and "
             "the primary"),
    ]}}

    @model_validator(mode="after")
    def _one_source(self) -> "Comparison":
        if (self.rates is None) == (self.judge is None):
            raise ValueError("set exactly one of rates or judge")
        if self.rates is not None:
            for field_name in ("bad", "total"):
                if not _VARIANT.search(getattr(self.rates, field_name)):
                    raise ValueError(f"rates.{field_name} must use {{{{ variant }}}}: the same query is asked "
                                     "of the canary and the primary")
        return self
