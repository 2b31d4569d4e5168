"""The rollout state machine. Pure: no I/O, no clock; every tick is decide(spec, status, world, now).

Failure counting, stated once so users can predict it: each analysis run (one tick of every
gate) is one check. A check fails when any gate fails (or, with onNoData/onError: Fail, has no
data or errors); it passes when every gate passes; otherwise it is inconclusive and the step
holds. Counts are per step. A step advances after `checksPerStep` passed checks; the rollout
rolls back on the failed check that makes `checksFailed > failureLimit` — in that same tick.

Comparison gates (analysis.compare) follow the anytime-valid rule instead: roll back as soon as
the evidence shows, at confidence 1 - alpha, that the canary is worse than a gate's tolerance
(whatever failureLimit says); leave the last step below 100 % only when it shows, at the same
confidence, that every gate is within tolerance; otherwise hold, up to holdTimeout (then roll
back, or pause for a person: onHoldTimeout). Intermediate steps advance as above, and a step after
the first widens the canary's share only once every rates gate's step guard holds (evidence at
80 % that its ratio is below stepMaxRatio): a bad canary stays at a small share while the evidence
for its rollback comes in.

An optional shadow phase comes before the first step: the route keeps every user on the primary
and mirrors a share of requests to the canary, whose answers are judged against the primary's on
the same requests. Its checks count like a step's (with the shadow's own gates, if it declares
them); it passes once they have passed, minDuration has gone by and the judge has minPairs judged
pairs; a failing shadow rolls back with no user ever served by the canary.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from canarist.api.compare import STEP_GUARD_CONFIDENCE
from canarist.api.durations import parse_duration
from canarist.api.cohorts import cohort_problems, cohort_weight, cohort_weights
from canarist.api.spec import Analysis, CanaryReleaseSpec, Cohort
from canarist.api.status import CanaryReleaseStatus, Check, CheckResult, CohortStatus, Phase, ShadowStatus

from .changes import changes
from .conditions import set_condition
from .model import Decision, EnsureApex, EnsurePrimary, EnsureServices, Event, ScaleCanary, SetRoute, World
from .validation import spec_problems

ROLLOUT_PHASES = (Phase.SHADOWING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING)
STEADY_PHASES = (Phase.IDLE, Phase.SUCCEEDED, Phase.ROLLED_BACK)


def in_shadow(status: CanaryReleaseStatus) -> bool:
    """The rollout is in its shadow phase (shadowing, or paused in it)."""
    return status.shadow is not None and status.shadow.state == "Running"


def active_analysis(status: CanaryReleaseStatus) -> Analysis | None:
    """The gates in force now: the shadow's own during the shadow phase, if it declares them."""
    if in_shadow(status) and status.pinned_shadow is not None and status.pinned_shadow.analysis is not None:
        return status.pinned_shadow.analysis
    return status.pinned_analysis


def _gathering(status: CanaryReleaseStatus) -> bool:
    """Evidence is being gathered: a step with users on the canary, or a shadow with its mirror in place."""
    if status.phase == Phase.SHADOWING:
        return status.shadow is not None and status.shadow.started_at is not None
    return status.phase == Phase.PROGRESSING and status.step_weight > 0


def analysis_due(status: CanaryReleaseStatus, now: datetime) -> bool:
    """Whether the handler should run the gates before calling decide() this tick."""
    at = next_check_at(status)
    return at is not None and now >= at


def next_check_at(status: CanaryReleaseStatus) -> datetime | None:
    """When the next analysis check is due (datetime.min: at once); None while no evidence is gathered."""
    analysis = active_analysis(status)
    if not _gathering(status) or analysis is None:
        return None
    since = status.last_check_at or status.step_started_at
    return datetime.min.replace(tzinfo=timezone.utc) if since is None else since + parse_duration(analysis.interval)


def comparisons_due(status: CanaryReleaseStatus) -> bool:
    """Comparison gates run on every tick of a step: their evidence may be read at any time. Not at
    a 100 % step: the primary serves nobody there, so there is nothing to compare (the decision to
    get there was the promotion)."""
    return _gathering(status) and status.step_weight < 100 and active_analysis(status) is not None


def decide(spec: CanaryReleaseSpec, status: CanaryReleaseStatus, world: World, now: datetime,
           generation: int | None = None) -> Decision:
    return _Tick(spec, status, world, now, generation).run()


def _short(revision: str | None) -> str:
    return (revision or "?")[:10]


def _promoted(revision: str | None) -> str:
    return f"revision {_short(revision)} promoted; the primary serves it"


class _Tick:
    def __init__(self, spec: CanaryReleaseSpec, status: CanaryReleaseStatus, world: World, now: datetime,
                 generation: int | None) -> None:
        self.spec, self.world, self.now = spec, world, now
        self.s = status.model_copy(deep=True)
        self.s.observed_generation = generation
        self.d = Decision(status=self.s)
        self.spec_issues = spec_problems(spec)
        self.cohorts_valid = not cohort_problems(spec)
        if spec.shadow is not None and spec.shadow.mirror == "Route" and world.mirror_problem:
            self.spec_issues.append(world.mirror_problem)

    # -- entry -------------------------------------------------------------------------------

    def run(self) -> Decision:
        s, w = self.s, self.world
        if w.routed_weight is not None:
            s.canary_weight = w.routed_weight  # status tells the weight users get, not the one wished for
        if w.routed_cohorts is not None:
            routed = dict(w.routed_cohorts)
            for cohort in s.cohorts:
                cohort.canary_weight = routed.get(cohort.name, 0)
        if w.problems or w.target_revision is None:
            self._blocked()
        else:
            if not self._paused:
                self._unblock()
            s.phase = s.phase or Phase.INITIALIZING
            if s.phase == Phase.INITIALIZING:
                self._initializing()
            elif s.phase in STEADY_PHASES:
                self._steady()
            elif s.phase == Phase.PROMOTING:
                self._promoting()
            else:
                self._rolling()
        self._conditions()
        return self.d

    def _event(self, reason: str, message: str, warning: bool = False) -> None:
        self.d.events.append(Event(reason, message, "Warning" if warning else "Normal"))

    def _pending(self, action: str) -> bool:
        token = getattr(self.world.requests, action)
        return token is not None and self.s.handled_requests.get(action) != token

    def _take(self, action: str) -> bool:
        """True once per new request token for `action`; marks it handled."""
        if not self._pending(action):
            return False
        self.s.handled_requests[action] = getattr(self.world.requests, action)
        return True

    def _ignore_requests(self, *actions: str) -> None:
        for action in actions:
            if self._take(action):
                self._event("RequestIgnored", f"{action} request ignored: nothing to {action} in phase {self.s.phase.value}")

    @property
    def _paused(self) -> bool:
        return self.spec.suspend or self.world.requests.paused

    def _pause_reason(self) -> str:
        return "spec.suspend is true" if self.spec.suspend else "the canarist.dev/paused annotation is set"

    # -- phases ------------------------------------------------------------------------------

    def _blocked(self) -> None:
        s = self.s
        problems = list(self.world.problems) or ["spec.targetRef: the target Deployment is missing"]
        s.message = "; ".join(problems)
        if s.phase in ROLLOUT_PHASES:
            self._block_clock()
        # Never touch the stable version because of bad input; only stop sending users to a canary
        # that can no longer be trusted or that has disappeared.
        if (s.phase in ROLLOUT_PHASES and (s.step_weight > 0 or s.canary_weight > 0 or self.world.routed_mirror > 0)
                and self.world.routing_available):
            s.step_weight = 0
            s.message += "; all traffic is back on the primary, and the steps restart from the first once this is fixed"
            self.d.actions.append(self._route(0))

    def _block_clock(self) -> None:
        """Time blocked or paused mid-rollout does not count against holdTimeout."""
        if self.s.blocked_since is None:
            self.s.blocked_since = self.now

    def _unblock(self) -> None:
        s = self.s
        if s.blocked_since is None:
            return
        if s.hold_started_at is not None and s.phase in ROLLOUT_PHASES:
            s.hold_started_at += max(self.now - s.blocked_since, timedelta(0))
        s.blocked_since = None

    def _initializing(self) -> None:
        s, w = self.s, self.world
        if w.primary_revision is not None and w.primary_revision != w.target_revision:
            # A primary of another revision (left serving by an earlier CanaryRelease of this
            # target, or written before the target changed) is the stable version: never
            # overwritten here; the Deployment's revision walks the steps once it serves.
            serving, adopted = w.primary_revision, True
            self.d.actions += [EnsureServices()]
        else:
            serving, adopted = w.target_revision, False
            self.d.actions += [EnsureServices(), EnsurePrimary(w.target_revision)]
        if not w.primary_ready:
            s.message = f"waiting for the primary (revision {_short(serving)}) to be Ready"
            return
        # Only a Ready primary gets traffic (the route may exist and serve something else: a route
        # handed back to the target by an earlier CanaryRelease of it), and nothing is scaled
        # down before the route is seen sending everything to the primary.
        self.d.actions += [self._route(0), EnsureApex()]
        if w.routed_weight != 0:
            s.message = f"routing all traffic to the primary (revision {_short(serving)})"
            return
        self.d.actions.append(ScaleCanary(up=False))
        s.revisions.primary = serving
        if not adopted:
            s.revisions.primary_template = w.target_template
            s.revisions.primary_config = list(w.target_config)
        s.phase, s.step_weight = Phase.IDLE, 0
        s.message = f"primary serves revision {_short(serving)}"
        if adopted:
            self._event("Initialized", f"adopted the primary serving revision {_short(serving)}; revision "
                                       f"{_short(w.target_revision)} will be released through the steps")
        else:
            self._event("Initialized", f"created the primary for revision {_short(serving)}; all traffic goes to it")

    def _steady(self) -> None:
        s, w = self.s, self.world
        target = w.target_revision
        self._ignore_requests("abort", "promote")
        # A retry is consumed only when it acts, so one asked for while paused still acts on resume.
        retry = self._pending("retry")
        if retry and not (s.phase == Phase.ROLLED_BACK and target == s.rolled_back_revision):
            self._ignore_requests("retry")
            retry = False

        if target == s.revisions.primary:
            if s.phase == Phase.ROLLED_BACK:
                s.phase = Phase.IDLE
            # After a release the status keeps saying which revision it promoted.
            if not (s.phase == Phase.SUCCEEDED and s.message == _promoted(target)):
                s.message = f"primary serves revision {_short(target)}"
        elif s.phase == Phase.ROLLED_BACK and target == s.rolled_back_revision and not retry:
            # The rollback's own message (why, and at which step) stays: the next ticks add the way out.
            hint = "change the Deployment for a new revision, or request a retry to release it again"
            if not (s.message or "").startswith("rolled back revision"):
                s.message = f"revision {_short(target)} was rolled back; {hint}"
            elif not s.message.endswith(hint):
                s.message = f"{s.message}; {hint}"
        elif self._paused:
            s.message = f"revision {_short(target)} waits: {self._pause_reason()}"
        elif self.spec_issues:
            s.message = f"revision {_short(target)} cannot start: " + "; ".join(self.spec_issues)
        else:
            if retry:
                self._take("retry")
                self._event("Retry", f"retrying revision {_short(target)} by request")
            self._start_rollout(target)
            return
        self._converge()
        if w.primary_revision is None and target == s.revisions.primary:
            # The primary was deleted; the target still holds its template, so it can be rebuilt.
            self.d.actions.insert(0, EnsurePrimary(target))
            s.message = f"recreating the primary (revision {_short(target)}), which was deleted"

    def _rolling(self) -> None:
        s, w = self.s, self.world
        if w.target_revision != s.revisions.canary:
            self._target_changed()
            return
        if self._take("abort"):
            self._rollback("Aborted", "aborted by request")
            return
        if self._take("promote"):
            self._event("ManualPromotion", f"promoting revision {_short(s.revisions.canary)} by request, "
                                           f"skipping the remaining steps")
            self._start_promoting()
            return
        self._ignore_requests("retry")

        if s.awaiting_decision:
            s.message = (f"holdTimeout passed at {s.step_weight}% without a decision; waiting for a person: "
                         "kubectl canarist promote or abort")
            self._converge()
            return
        if self._paused:
            self._block_clock()
            if s.phase != Phase.PAUSED:
                s.phase = Phase.PAUSED
                self._event("Paused", f"rollout paused at {s.step_weight}%: {self._pause_reason()}")
            s.message = f"paused at {s.step_weight}%: {self._pause_reason()}"
            self._converge()
            return
        if s.phase == Phase.PAUSED:
            s.phase = Phase.SHADOWING if in_shadow(s) else Phase.PROGRESSING
            # Evidence after a pause starts a fresh interval (the pause itself does not count
            # against holdTimeout: see _unblock).
            s.last_check_at = self.now
            if s.step_started_at is not None:
                s.step_started_at = self.now
            self._unblock()
            self._event("Resumed", f"rollout resumed {self._where_short()}")

        if s.phase == Phase.SHADOWING:
            self._shadowing()
        elif s.step_weight == 0:
            if s.restarting_canary and not w.canary_has_pods:
                s.restarting_canary = False
            if s.restarting_canary:
                s.message = (f"replacing the canary's pods, which started before the configuration of revision "
                             f"{_short(s.revisions.canary)} (running pods do not read it again)")
            elif w.canary_ready and s.pinned_shadow is not None and s.shadow is None:
                self._enter_shadow()
            elif w.canary_ready:
                self._enter_step(0)
            else:
                s.message = f"waiting for the canary (revision {_short(s.revisions.canary)}) to be Ready"
        elif w.routed_weight is not None and (w.routed_weight != s.step_weight or self._cohorts_unrouted()):
            # A step begins when its weights are in the route, not when the status says so (a tick
            # cut short between the two, a route write that failed): no evidence of the step
            # counts before, and its first interval starts once users are there.
            s.step_started_at, s.last_check_at = self.now, None
            s.message = f"step {s.step_index + 1}: moving the route to {s.step_weight}% (it has {w.routed_weight}%)"
            if w.routed_weight == s.step_weight:
                s.message = f"step {s.step_index + 1}: moving the cohorts' rules to their shares"
        elif w.comparisons is not None and self._weigh_evidence(w.comparisons):
            pass  # rolled back, or left the last step below 100 % on the evidence
        elif w.checks is not None:
            self._evaluate(self._this_check())
        if s.phase in (Phase.PROGRESSING, Phase.SHADOWING):
            self._check_hold_timeout()
        self._converge()

    def _shadowing(self) -> None:
        s, w = self.s, self.world
        shadow = s.shadow
        assert shadow is not None and s.pinned_shadow is not None
        if shadow.mirror == "Route" and w.mirror_problem:
            shadow.started_at = s.step_started_at = s.last_check_at = None
            s.message = f"shadow cannot mirror requests to the canary: {w.mirror_problem}"
            return
        if shadow.mirror == "Route" and w.routed_mirror != shadow.percent:
            # Like a step's weight: the shadow's evidence counts once the mirror is in the route.
            shadow.started_at = s.step_started_at = s.last_check_at = None
            s.message = (f"shadow: mirroring {shadow.percent}% of requests to the canary "
                         f"(the route mirrors {w.routed_mirror}%)")
            return
        if shadow.started_at is None:
            shadow.started_at = s.step_started_at = s.hold_started_at = self.now
            s.last_check_at = None
            self._reset_counters()
            s.message = (f"shadow: the canary answers {shadow.percent}% of requests, mirrored; its answers reach "
                         "no user and are judged against the primary's")
            how = "by the route" if shadow.mirror == "Route" else "by the mirror outside canarist (External)"
            self._event("ShadowStarted", f"shadow: {shadow.percent}% of requests mirrored to revision "
                                         f"{_short(s.revisions.canary)} {how}; every user is served by the primary")
            return
        # Judged pairs, from the judge's verdict at each check or, every tick, from the judge
        # comparisons' evidence (its pairs since the rollout started: the shadow's, here).
        judged = [e.canary_events for e in (w.evidence or ()) if e.kind == "judge"]
        if w.shadow_pairs is not None or judged:
            shadow.pairs = max(w.shadow_pairs or 0, int(max(judged, default=0)), shadow.pairs or 0)
        if w.comparisons is not None and self._weigh_evidence(w.comparisons):
            return
        if w.checks is not None:
            self._evaluate(self._this_check())
        elif s.phase == Phase.SHADOWING and self._shadow_ready():
            self._leave_shadow()

    def _this_check(self) -> tuple[Check, ...]:
        """This tick's check: every gate's result, and the canary's availability."""
        w = self.world
        checks = (w.checks or ()) + (w.comparisons or ())
        if not w.canary_available:
            # Pods crashing mid-step leave the gates without data, which alone would only hold
            # the step while its share of users gets errors: a canary with no Ready pod, or one
            # whose rollout exceeded its progress deadline, fails the check. One pod coming and
            # going (an eviction, a node drain) does not.
            checks += (Check(name="canary-ready", kind="workload", result=CheckResult.FAILED, at=self.now,
                             message=w.canary_unavailable_reason or "the canary has no Ready pod"),)
        return checks

    def _shadow_ready(self) -> bool:
        """Whether the shadow may pass: its checks passed, minDuration gone by, minPairs judged.
        Says what it waits for in the message otherwise."""
        s, shadow, rules = self.s, self.s.shadow, self.s.pinned_shadow
        analysis = active_analysis(s)
        assert shadow is not None and rules is not None and analysis is not None
        if s.checks_passed < analysis.checks_per_step:
            return False
        waiting = []
        elapsed = self.now - (shadow.started_at or self.now)
        if elapsed < parse_duration(rules.min_duration):
            waiting.append(f"{int(elapsed.total_seconds())}s of minDuration {rules.min_duration}")
        if rules.min_pairs and (shadow.pairs or 0) < rules.min_pairs:
            waiting.append(f"{shadow.pairs or 0} of minPairs {rules.min_pairs} judged pairs")
        if waiting:
            s.message = f"shadow holds: checks passed; waiting for {' and '.join(waiting)}"
            return False
        return True

    def _leave_shadow(self) -> None:
        s, shadow = self.s, self.s.shadow
        assert shadow is not None
        shadow.state, shadow.finished_at = "Passed", self.now
        shadow.checks = list(s.last_checks)
        verdicts = "; ".join(c.describe() for c in s.last_checks) or "no checks"
        self._event("ShadowPassed", f"revision {_short(s.revisions.canary)} passed the shadow phase "
                                    f"({shadow.pairs or 0} judged pairs): {verdicts}")
        s.phase = Phase.PROGRESSING
        self._enter_step(0)

    def _where(self) -> str:
        return "shadow" if in_shadow(self.s) else f"step {self.s.step_index + 1}"

    def _where_short(self) -> str:
        return f"in shadow ({self.s.shadow.percent}% mirrored)" if in_shadow(self.s) and self.s.shadow else \
            f"at {self.s.step_weight}%"

    def _promoting(self) -> None:
        s, w = self.s, self.world
        if w.target_revision != s.revisions.canary:
            if w.primary_revision == s.revisions.canary:
                s.revisions.primary = s.revisions.canary  # the primary had already been updated
            self._target_changed()
            return
        self._ignore_requests("abort", "promote", "retry")
        if w.primary_ready and w.primary_revision == s.revisions.canary:
            s.revisions.primary = s.revisions.canary
            s.revisions.primary_template = s.revisions.canary_template
            s.revisions.primary_config = s.revisions.canary_config
            s.phase, s.step_weight = Phase.SUCCEEDED, 0
            s.message = _promoted(s.revisions.primary)
            self._event("Promoted", s.message)
        else:
            s.message = f"promoting: waiting for the primary to run revision {_short(s.revisions.canary)}"
        self._converge()

    # -- transitions -------------------------------------------------------------------------

    def _start_rollout(self, revision: str) -> None:
        s, w = self.s, self.world
        # Pods read their ConfigMaps and Secrets when they start (env) or late (volumes): a canary
        # still running the same pod template would serve the old configuration, so its pods are
        # replaced. A new pod template gets new pods from the Deployment controller anyway.
        s.restarting_canary = w.canary_has_pods and (
            s.revisions.canary_template is None or s.revisions.canary_template == w.target_template)
        s.phase = Phase.PROGRESSING
        s.revisions.canary = revision
        s.revisions.canary_template = w.target_template
        s.revisions.canary_config = list(w.target_config)
        s.revisions.changes = changes(s.revisions.primary_template, w.target_template, s.revisions.primary_config,
                                      s.revisions.canary_config)
        s.pinned_steps = list(self.spec.steps)
        s.pinned_analysis = self.spec.analysis.model_copy(deep=True)
        s.pinned_shadow = self.spec.shadow.model_copy(deep=True) if self.spec.shadow is not None else None
        s.pinned_cohorts = [c.model_copy(deep=True) for c in self.spec.cohorts]
        s.cohorts = [CohortStatus(name=c.name, min_samples=c.min_samples) for c in self.spec.cohorts]
        s.shadow = None
        s.step_index, s.step_weight = 0, 0
        s.step_started_at = s.last_check_at = None
        s.rollout_started_at = s.hold_started_at = self.now
        s.blocked_since = None
        s.last_checks, s.evidence, s.awaiting_decision = [], [], False
        s.rolled_back_revision = None
        self._reset_counters()
        s.message = f"waiting for the canary (revision {_short(revision)}) to be Ready"
        gates = len(s.pinned_analysis.metrics) + (1 if s.pinned_analysis.min_samples else 0)
        why = f" ({'; '.join(s.revisions.changes)})" if s.revisions.changes else ""
        shadow = s.pinned_shadow
        through = "" if shadow is None else (
            f"a shadow phase ({shadow.percent}% mirrored, at least {shadow.min_duration} and {shadow.min_pairs} "
            "judged pairs), then ")
        self._event("RolloutStarted", f"releasing revision {_short(revision)}{why} through {through}steps "
                                      f"{s.pinned_steps} with {gates} gate(s) every {s.pinned_analysis.interval}")
        self._converge()

    def _target_changed(self) -> None:
        s, target = self.s, self.world.target_revision
        old = s.revisions.canary
        if target == s.revisions.primary:
            self._end_shadow("Skipped")
            s.phase, s.step_weight = Phase.IDLE, 0
            s.message = f"the Deployment went back to the primary's revision {_short(target)}; rollout cancelled"
            self._event("RolloutCancelled", s.message)
            self._converge()
            return
        self._event("NewRevision", f"revision {_short(target)} replaced {_short(old)} mid-rollout; "
                                   "restarting from the first step with the analysis now in the spec")
        if self._paused or self.spec_issues:
            # Send users back to the primary; the steady phase starts the new revision once it can.
            s.phase, s.step_weight = Phase.IDLE, 0
            reason = self._pause_reason() if self._paused else "; ".join(self.spec_issues)
            s.message = f"revision {_short(target)} waits: {reason}"
            self._converge()
            return
        self._start_rollout(target)

    def _enter_step(self, index: int) -> None:
        s = self.s
        steps = s.pinned_steps or self.spec.steps
        s.step_index, s.step_weight = index, steps[index]
        s.step_started_at, s.last_check_at = self.now, None
        s.hold_started_at = self.now
        self._reset_counters()
        s.message = f"step {index + 1}/{len(steps)}: {s.step_weight}% to the canary"
        self._event("StepStarted", f"step {index + 1}/{len(steps)}: canary weight {s.step_weight}%")

    def _enter_shadow(self) -> None:
        s, rules = self.s, self.s.pinned_shadow
        assert rules is not None
        s.phase, s.step_index, s.step_weight = Phase.SHADOWING, 0, 0
        s.shadow = ShadowStatus(percent=rules.percent, mirror=rules.mirror)
        s.step_started_at = s.last_check_at = None
        s.hold_started_at = self.now
        self._reset_counters()
        if rules.mirror == "External":
            self._shadowing()  # nothing to wait for in the route: the shadow starts now
        else:
            s.message = f"shadow: mirroring {rules.percent}% of requests to the canary"

    def _reset_counters(self) -> None:
        s = self.s
        s.checks_passed = s.checks_failed = s.checks_inconclusive = s.provider_errors = 0

    def _end_shadow(self, state: str) -> None:
        """A shadow left other than by its own verdict (a person promoted, the rollout was cancelled)."""
        s = self.s
        if in_shadow(s) and s.shadow is not None:
            s.shadow.state, s.shadow.finished_at = state, self.now  # type: ignore[assignment]
            s.shadow.checks = list(s.last_checks)

    def _start_promoting(self) -> None:
        s = self.s
        self._end_shadow("Skipped")
        s.phase, s.awaiting_decision = Phase.PROMOTING, False
        s.message = f"promoting: updating the primary to revision {_short(s.revisions.canary)}"
        self._converge()

    def _rollback(self, reason: str, why: str) -> None:
        s = self.s
        at = f"at step {s.step_index + 1} ({s.step_weight}%)" if s.step_weight else "before the first step"
        if in_shadow(s) and s.shadow is not None:
            at = (f"in shadow ({s.shadow.percent}% of requests mirrored; no user was served by the canary)"
                  if s.shadow.started_at is not None else "before the shadow's mirror was in place")
            s.shadow.state, s.shadow.finished_at = "Failed", self.now
            s.shadow.checks = list(s.last_checks)
        s.phase, s.step_weight = Phase.ROLLED_BACK, 0
        s.awaiting_decision = False
        s.rolled_back_revision = s.revisions.canary
        s.message = f"rolled back revision {_short(s.revisions.canary)} {at}: {why}"
        self._event("RolledBack", f"{reason}: {s.message}", warning=True)
        self._converge()

    # -- analysis ----------------------------------------------------------------------------

    def _evaluate(self, checks: tuple[Check, ...]) -> None:
        s = self.s
        analysis = active_analysis(s)
        assert analysis is not None
        s.last_checks, s.last_check_at = list(checks), self.now
        if self.world.evidence is not None:
            s.evidence = list(self.world.evidence)
        s.provider_errors += sum(1 for c in checks if c.result == CheckResult.ERROR)
        # Evidence at 1 - alpha that the canary is worse than a comparison's tolerance rolls back at
        # once: the test already accounts for noise, so there is nothing to tolerate (failureLimit
        # is for the fixed-threshold gates).
        regressions = [c for c in checks if c.kind == "compare" and c.result == CheckResult.FAILED]
        if regressions:
            self._rollback("Regression", "evidence at confidence "
                           f"{1 - analysis.alpha:g} that the canary is worse than tolerated: "
                           + "; ".join(c.describe() for c in regressions))
            return

        judged = {c.cohort: c.value for c in checks if c.cohort is not None and c.name == f"judge-samples[{c.cohort}]"}
        for cohort in s.cohorts:
            if cohort.name in judged:
                cohort.judged = None if judged[cohort.name] is None else int(judged[cohort.name])
        # A cohort that does not require evidence (no minSamples) is judged when it has enough, and
        # too little of it never holds a step: with few requests in it, it could hold forever.
        checks = tuple(c for c in checks if not (c.result == CheckResult.NO_DATA and self._optional(c.cohort)))

        def counts_as_failure(c: Check) -> bool:
            return (c.result == CheckResult.FAILED
                    or (c.result == CheckResult.NO_DATA and analysis.on_no_data == "Fail")
                    or (c.result == CheckResult.ERROR and analysis.on_error == "Fail"))

        failed = [c for c in checks if counts_as_failure(c)]
        if failed:
            s.checks_failed += 1
            detail = "; ".join(c.describe() for c in failed)
            if s.checks_failed > analysis.failure_limit:
                self._rollback("CheckFailed", f"failed check {s.checks_failed} (failureLimit "
                                              f"{analysis.failure_limit}): {detail}")
                return
            s.message = (f"{self._where()}: check failed ({s.checks_failed} of "
                         f"{analysis.failure_limit} tolerated): {detail}")
            self._event("CheckFailed", s.message, warning=True)
        elif any(c.result != CheckResult.PASSED for c in checks):
            s.checks_inconclusive += 1
            detail = "; ".join(c.describe() for c in checks if c.result != CheckResult.PASSED)
            s.message = f"{self._where()} holds {self._where_short()}: {detail}"
        else:
            s.checks_passed += 1
            if s.checks_passed >= analysis.checks_per_step:
                self._advance()
            else:
                s.message = (f"{self._where()}: {s.checks_passed}/{analysis.checks_per_step} "
                             "checks passed")

    def _optional(self, cohort: str | None) -> bool:
        """A cohort's check whose cohort does not require evidence (spec minSamples unset)."""
        if cohort is None:
            return False
        rules = next((c for c in self._cohorts() if c.name == cohort), None)
        return rules is None or rules.min_samples is None

    def _last_below_full(self) -> bool:
        s = self.s
        steps = s.pinned_steps or self.spec.steps
        return steps[s.step_index] < 100 and (s.step_index + 1 == len(steps) or steps[s.step_index + 1] >= 100)

    def _held_by_evidence(self) -> bool:
        """Whether the step's evidence keeps it from advancing: the promotion rule on the last step
        below 100 %, the step guard on the steps between the first and that one."""
        s = self.s
        if self._last_below_full():
            return not self._within_tolerance()
        return s.step_index > 0 and not self._guard_holds()

    def _advance(self) -> None:
        s = self.s
        if in_shadow(s):
            if self._shadow_ready():
                self._leave_shadow()
            return
        steps = s.pinned_steps or self.spec.steps
        if self._held_by_evidence():
            return
        if s.step_index + 1 < len(steps):
            self._enter_step(s.step_index + 1)
        else:
            self._event("AnalysisPassed", f"revision {_short(s.revisions.canary)} passed every step")
            self._start_promoting()

    def _weigh_evidence(self, comparisons: tuple[Check, ...]) -> bool:
        """Every tick, not only every interval: the evidence may be read at any time. Roll back on
        evidence of a regression; once the last step below 100 % has its passed checks, leave it as
        soon as the evidence says every gate is within tolerance. True when the rollout moved."""
        s, analysis = self.s, active_analysis(self.s)
        assert analysis is not None
        if self.world.evidence is not None:
            s.evidence = list(self.world.evidence)
        regressions = [c for c in comparisons if c.result == CheckResult.FAILED]
        if regressions:
            s.last_checks, s.last_check_at = list(comparisons), self.now
            self._rollback("Regression", f"evidence at confidence {1 - analysis.alpha:g} that the canary is worse "
                                         "than tolerated: " + "; ".join(c.describe() for c in regressions))
            return True
        steps = s.pinned_steps or self.spec.steps
        if in_shadow(s):
            return False  # the shadow passes on its own rule (_shadow_ready), not on the promotion's
        # A step whose checks have passed and that only waits for evidence moves on the tick the
        # evidence arrives, not at the next interval.
        if (s.checks_passed >= analysis.checks_per_step and steps[s.step_index] < 100
                and (self._last_below_full() or s.step_index > 0) and not self._held_by_evidence()):
            self._advance()
            return True
        return False

    def _guard_holds(self) -> bool:
        """A step after the first widens only once every rates gate's evidence shows, at
        STEP_GUARD_CONFIDENCE, that the canary's ratio is below its stepMaxRatio."""
        s, analysis = self.s, self.s.pinned_analysis
        if analysis is None or not any(g.rates is not None for g in analysis.compare):
            return True
        by_name = {e.name: e for e in s.evidence}
        waiting = [(g.name, g.rates.step_guard, by_name.get(g.name)) for g in analysis.compare if g.rates is not None]
        waiting = [(name, bound, e) for name, bound, e in waiting
                   if e is None or e.step_evidence is None or e.step_threshold is None
                   or e.step_evidence < e.step_threshold]
        if not waiting:
            return True
        detail = "; ".join(
            f"{name}: {e.needs or 'collecting'} (evidence {e.step_evidence or 1:.3g} of {e.step_threshold or 0:.3g})"
            if e else f"{name}: no evidence yet" for name, bound, e in waiting)
        bounds = ", ".join(sorted({f"{bound:g}x" for _, bound, _ in waiting}))
        s.message = (f"step {s.step_index + 1} holds at {s.step_weight}%: more traffic needs evidence at "
                     f"{STEP_GUARD_CONFIDENCE:.0%} that the canary's rate of bad events is below {bounds} the primary's; {detail}")
        return False

    def _within_tolerance(self) -> bool:
        """Promotion needs evidence at 1 - alpha that every comparison gate is within tolerance."""
        s, analysis = self.s, self.s.pinned_analysis
        if analysis is None or not analysis.compare:
            return True
        by_name = {e.name: e for e in s.evidence}
        waiting = [(g.name, by_name.get(g.name)) for g in analysis.compare
                   if by_name.get(g.name) is None or by_name[g.name].verdict != "WithinTolerance"]
        if not waiting:
            return True
        detail = "; ".join(f"{name}: {e.needs or 'collecting'} (evidence {e.promote:.3g} of {e.threshold:.3g})"
                           if e else f"{name}: no evidence yet" for name, e in waiting)
        s.message = (f"step {s.step_index + 1} holds at {s.step_weight}%: promotion needs evidence at confidence "
                     f"{1 - analysis.alpha:g} that the canary is within tolerance; {detail}")
        return False

    def _check_hold_timeout(self) -> None:
        s = self.s
        analysis = active_analysis(s)
        # Also while waiting for the canary to be Ready; shifted by time spent paused or blocked.
        since = s.hold_started_at or s.step_started_at or s.rollout_started_at
        if analysis is None or analysis.hold_timeout is None or since is None:
            return
        if self.now - since < parse_duration(analysis.hold_timeout):
            return
        why = f"step {s.step_index + 1} did not advance within holdTimeout {analysis.hold_timeout} (last: {s.message})"
        if analysis.on_hold_timeout == "Pause":
            s.phase, s.awaiting_decision = Phase.PAUSED, True
            self._block_clock()
            self._event("HoldTimeout", f"{why}; paused for a person to promote or abort", warning=True)
            s.message = f"{why}; waiting for a person: kubectl canarist promote or abort"
            return
        self._rollback("HoldTimeout", why)

    # -- desired state -----------------------------------------------------------------------

    def _converge(self) -> None:
        """The actions that make the world match the status; idempotent, re-sent every tick."""
        s, actions = self.s, self.d.actions
        actions.clear()
        # Applied in order, and the first failure stops the rest: each relies on the ones before
        # it (users leave the canary before it is scaled down; the apex Service points at the
        # primary before the target loses its pods; a canary gets traffic once it is scaled up).
        if s.phase in STEADY_PHASES:
            actions += [self._route(0), EnsureApex(), ScaleCanary(up=False), EnsureServices()]
        elif s.phase == Phase.PROMOTING:
            actions += [EnsureServices(), ScaleCanary(up=True), EnsurePrimary(s.revisions.canary),
                        self._route(s.step_weight), EnsureApex()]
        elif s.restarting_canary and s.step_weight == 0:
            actions += [EnsureServices(), self._route(0), ScaleCanary(up=False), EnsureApex()]
        else:
            # The mirror stays while a shadow is paused: its answers reach nobody.
            shadow = s.shadow if in_shadow(s) else None
            mirror = (shadow.percent if shadow is not None and shadow.mirror == "Route"
                      and not self.world.mirror_problem else 0)
            actions += [EnsureServices(), ScaleCanary(up=True),
                        self._route(s.step_weight, mirror), EnsureApex()]

    def _cohorts(self) -> list[Cohort]:
        """The cohorts in force: the rollout's pinned ones, else the spec's (none while they are invalid)."""
        if self.s.phase in ROLLOUT_PHASES and self.s.pinned_cohorts is not None:
            return self.s.pinned_cohorts
        return self.spec.cohorts if self.cohorts_valid else []

    def _route(self, canary: int, mirror: int = 0) -> SetRoute:
        """The route giving the canary `canary` % of the traffic in no cohort, and each cohort its share."""
        steps = self.s.pinned_steps or self.spec.steps
        return SetRoute(100 - canary, canary, mirror,
                        tuple((c, cohort_weight(c, steps, canary)) for c in self._cohorts()))

    def _cohorts_unrouted(self) -> bool:
        """Some cohort's rule does not give it its share of this step yet."""
        routed = self.world.routed_cohorts
        if routed is None:
            return False
        return dict(routed) != dict(cohort_weights(self._cohorts(), self.s.pinned_steps or self.spec.steps,
                                                   self.s.step_weight))

    def _conditions(self) -> None:
        s, w, now, gen = self.s, self.world, self.now, self.s.observed_generation
        conds = s.conditions
        if w.problems or w.target_revision is None:
            conds = set_condition(conds, "Ready", False, "Blocked", s.message, now, gen)
        elif self.spec_issues:
            conds = set_condition(conds, "Ready", False, "InvalidSpec", "; ".join(self.spec_issues), now, gen)
        elif s.phase == Phase.INITIALIZING:
            conds = set_condition(conds, "Ready", False, "Initializing", s.message, now, gen)
        else:
            conds = set_condition(conds, "Ready", True, "PrimaryServing",
                                  f"primary serves revision {_short(s.revisions.primary)}", now, gen)
        phase = s.phase or Phase.INITIALIZING
        conds = set_condition(conds, "Progressing", phase in ROLLOUT_PHASES, phase.value, s.message, now, gen)
        promoted = phase in (Phase.IDLE, Phase.SUCCEEDED) and s.revisions.primary == w.target_revision
        conds = set_condition(conds, "Promoted", promoted, phase.value,
                              s.message if promoted else f"phase {phase.value}", now, gen)
        conds = set_condition(conds, "RolledBack", phase == Phase.ROLLED_BACK, phase.value,
                              s.message if phase == Phase.ROLLED_BACK else "", now, gen)
        if w.warnings is not None:
            conds = self._warning_condition(conds, w.warnings)
        s.conditions = conds

    def _warning_condition(self, conds: list, warnings: tuple[str, ...]) -> list:
        """Other Services and routes that reach the target's pods lose them while the target is
        scaled to zero: named before anything is scaled, as a condition and once as an Event."""
        before = next((c for c in conds if c.type == "Warning"), None)
        message = "; ".join(warnings)
        if warnings and (before is None or before.status != "True" or before.message != message):
            self._event("TargetPodsSelectedElsewhere", message, warning=True)
        return set_condition(conds, "Warning", bool(warnings),
                             "TargetPodsSelectedElsewhere" if warnings else "NoWarning", message, self.now,
                             self.s.observed_generation)
