"""The rollout state machine: a pure function from (spec, status, world, now) to a Decision."""

from .decide import analysis_due, comparisons_due, decide
from .model import (Action, Decision, EnsureApex, Event, EnsurePrimary, EnsureServices, Requests, ScaleCanary, SetRoute,
                    World)

__all__ = ["Action", "Decision", "EnsureApex", "EnsurePrimary", "EnsureServices", "Event", "Requests", "ScaleCanary",
           "SetRoute", "World", "analysis_due", "comparisons_due", "decide"]
