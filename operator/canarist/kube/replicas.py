"""How many replicas the primary and the canary (the target) run: pure rules, no I/O.

Your Deployment (the target) is where you state a replica count; canarist never keeps a count of
its own. canarist itself writes the target only to 0 (idle) or, when the canary is up, to the
primary's count. Any other value it finds on the target is yours, and the primary follows it.

Without an HPA on the target, every tick:

- Idle, target > 0: your count. The primary is set to it, then the target back to 0. (Argo CD or
  Flux applying `replicas: 5` while idle: the primary goes to 5, the target to 0. With self-heal
  and no `ignoreDifferences` on `/spec/replicas` they write 5 again and canarist 0 again; the
  primary stays at 5 throughout.)
- Idle, target 0: nothing. A 0 of yours cannot be told from canarist's own, and the primary never
  follows a 0: it serves all traffic.
- Canary up, target 0: canarist scales the target to the primary's count.
- Canary up, target equal to the primary: nothing.
- Canary up, any other target count: your count. The primary is set to it; the target keeps it.
- The primary is created with the target's count (at least 1).

With an HPA on the target (its `scaleTargetRef` is your Deployment), canarist gives the primary a
twin HPA, `<hpa>-primary` (kube/autoscaling.py), and never fights either of them:

- The primary's count belongs to the twin: canarist writes it only when it creates the primary
  (the target's count, at least the HPA's minReplicas). Before the twin exists the primary is
  left alone too, since the target's count is then the HPA's choice for the canary's share of
  the traffic, not yours.
- Idle: canarist scales the target to 0. An HPA does not act on a Deployment at 0 replicas
  (condition ScalingActive=False, reason ScalingDisabled), so the two never fight.
- Canary up, target 0: canarist scales it to the HPA's minReplicas (at least 1). Flagger sets 1
  and lets the HPA raise it to minReplicas on its next sync; setting minReplicas directly spares
  the canary a readiness flap and a second rollout of pods.
- Canary up, target > 0: left alone, whatever the HPA makes of it.

Apply `primary` before `target`: scaling the target to 0 erases the only record of your count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaPlan:
    primary: int | None  # spec.replicas to write on the primary (its count to create it with if
                         # absent); None: leave it
    target: int | None   # spec.replicas to write on the target (scale subresource); None: leave it


def _count(replicas: int | None) -> int:
    # An absent spec.replicas is defaulted to 1 by the apiserver.
    return 1 if replicas is None else replicas


def desired_replicas(target_replicas: int | None, primary_replicas: int | None, canary_up: bool, *,
                     hpa_min_replicas: int | None = None, primary_hpa: bool = False) -> ReplicaPlan:
    """The writes that bring both counts where the module's rules want them.

    target_replicas: the target's spec.replicas. primary_replicas: the primary's, None when the
    primary does not exist yet. canary_up: the engine wants the canary running. hpa_min_replicas:
    the minReplicas (1 if unset) of the HPA scaling the target, None when there is none.
    primary_hpa: the twin HPA on the primary exists.
    """
    target = _count(target_replicas)
    if hpa_min_replicas is not None:
        floor = max(1, hpa_min_replicas)
        primary = max(target, floor) if primary_replicas is None else None
        if not canary_up:
            return ReplicaPlan(primary, 0 if target != 0 else None)
        return ReplicaPlan(primary, floor if target == 0 else None)

    current = primary_replicas
    # canarist's own values are 0 while idle and 0 or the primary's count while up; others are yours.
    yours = target > 0 and (not canary_up or target != current)
    if current is None:
        wanted = max(1, target)
    else:
        wanted = target if yours else current
    primary = None if (primary_hpa and current is not None) or wanted == current else wanted
    goal = wanted if canary_up else 0
    return ReplicaPlan(primary, goal if goal != target else None)


def handover_replicas(target_replicas: int | None, primary_replicas: int | None) -> int | None:
    """The target's count for taking all traffic back when its CanaryRelease is deleted.

    At least the primary's count (the one serving now), never lower than the target already is:
    an HPA on the target takes over from there, and a count you set mid-rollout is kept.
    """
    target = _count(target_replicas)
    wanted = max(1, primary_replicas or 0)
    return wanted if target < wanted else None
