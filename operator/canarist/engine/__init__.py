"""The rollout state machine: a pure function from (spec, status, world, now) to a Decision."""

from .decide import active_analysis, analysis_due, comparisons_due, decide, in_shadow, next_check_at
from .model import (Action, Decision, EnsureApex, Event, EnsurePrimary, EnsureServices, Requests, ScaleCanary, SetRoute,
                    World)

__all__ = ["Action", "Decision", "EnsureApex", "EnsurePrimary", "EnsureServices", "Event", "Requests", "ScaleCanary",
           "SetRoute", "World", "active_analysis", "analysis_due", "in_shadow", "comparisons_due", "decide", "next_check_at"]
