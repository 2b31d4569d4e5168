"""Replica counts tick by tick: the primary follows your count, and canarist never fights an HPA."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from canarist.kube.replicas import ReplicaPlan, desired_replicas, handover_replicas


@dataclass
class World:
    """The two Deployments' spec.replicas; tick() applies one plan the way the operator would."""
    target: int
    primary: int | None = None
    hpa_min: int | None = None
    twin: bool = False

    def tick(self, canary_up: bool) -> ReplicaPlan:
        plan = desired_replicas(self.target, self.primary, canary_up, hpa_min_replicas=self.hpa_min,
                                primary_hpa=self.twin)
        if plan.primary is not None:
            self.primary = plan.primary
        if plan.target is not None:
            self.target = plan.target
        return plan

    def settled(self, canary_up: bool) -> bool:
        return self.tick(canary_up) == ReplicaPlan(None, None)


# -- without an HPA ------------------------------------------------------------------------------


def test_first_sight_copies_the_count_then_scales_the_target_to_zero():
    world = World(target=3)
    assert world.tick(canary_up=False) == ReplicaPlan(primary=3, target=0)
    assert world.settled(canary_up=False)
    assert (world.target, world.primary) == (0, 3)


@pytest.mark.parametrize("target", [0, None])
def test_primary_is_created_with_at_least_one_replica(target):
    assert desired_replicas(target, None, False).primary == 1


def test_user_scales_the_target_while_idle_the_primary_follows():
    world = World(target=0, primary=3)
    world.target = 5  # kubectl scale, or Argo CD syncing replicas: 5
    assert world.tick(canary_up=False) == ReplicaPlan(primary=5, target=0)
    assert world.settled(canary_up=False)
    world.target = 2
    assert world.tick(canary_up=False) == ReplicaPlan(primary=2, target=0)


def test_gitops_self_heal_writing_five_again_never_moves_the_primary():
    world = World(target=0, primary=3)
    for _ in range(3):
        world.target = 5  # self-heal undoes canarist's 0
        world.tick(canary_up=False)
        assert (world.target, world.primary) == (0, 5)


def test_zero_while_idle_is_canarists_own_and_never_copied():
    world = World(target=0, primary=4)
    assert world.settled(canary_up=False)
    assert world.primary == 4


def test_canary_comes_up_at_the_primarys_count_and_goes_back_to_zero():
    world = World(target=0, primary=4)
    assert world.tick(canary_up=True) == ReplicaPlan(primary=None, target=4)
    assert world.settled(canary_up=True)
    assert world.tick(canary_up=False) == ReplicaPlan(primary=None, target=0)
    assert world.primary == 4


def test_user_scales_the_target_during_a_rollout_both_follow():
    world = World(target=0, primary=4)
    world.tick(canary_up=True)
    world.target = 6
    assert world.tick(canary_up=True) == ReplicaPlan(primary=6, target=None)
    assert world.settled(canary_up=True)
    assert world.tick(canary_up=False) == ReplicaPlan(primary=None, target=0)
    assert world.primary == 6


def test_new_revision_and_new_count_in_one_commit():
    world = World(target=0, primary=3)
    world.target = 5  # the same apply changes the template (canary up) and replicas
    assert world.tick(canary_up=True) == ReplicaPlan(primary=5, target=None)
    assert world.settled(canary_up=True)


def test_user_zero_during_a_rollout_never_takes_the_primary_down():
    world = World(target=0, primary=3)
    world.tick(canary_up=True)
    world.target = 0
    assert world.tick(canary_up=True) == ReplicaPlan(primary=None, target=3)
    assert world.primary == 3


def test_absent_replicas_is_the_apiservers_default_of_one():
    assert desired_replicas(None, 3, False) == ReplicaPlan(primary=1, target=0)


# -- with an HPA on the target -------------------------------------------------------------------


def test_hpa_primary_created_at_the_targets_count_or_at_least_min():
    assert desired_replicas(5, None, False, hpa_min_replicas=2).primary == 5
    assert desired_replicas(0, None, False, hpa_min_replicas=2).primary == 2


def test_hpa_canary_scaled_from_zero_to_min_then_left_to_the_hpa():
    world = World(target=0, primary=4, hpa_min=2, twin=True)
    assert world.tick(canary_up=True) == ReplicaPlan(primary=None, target=2)
    for hpa_choice in (3, 7, 1):  # the HPA changes the canary mid-rollout
        world.target = hpa_choice
        assert world.settled(canary_up=True)
        assert world.target == hpa_choice
    assert world.tick(canary_up=False) == ReplicaPlan(primary=None, target=0)


def test_hpa_min_zero_or_unset_still_brings_the_canary_up():
    assert desired_replicas(0, 4, True, hpa_min_replicas=0, primary_hpa=True).target == 1


def test_hpa_the_primary_is_never_written_while_the_twin_exists():
    world = World(target=0, primary=4, hpa_min=2, twin=True)
    world.primary = 9  # the twin scaled it
    world.target = 5   # a GitOps sync while idle
    assert world.tick(canary_up=False) == ReplicaPlan(primary=None, target=0)
    assert world.primary == 9
    world.target = 3   # the HPA on the canary mid-rollout
    assert world.tick(canary_up=True) == ReplicaPlan(primary=None, target=None)
    assert world.primary == 9


def test_hpa_canary_count_never_copied_before_the_twin_exists():
    # The canary's HPA sized it for 1 % of the traffic: copying that would shrink the stable.
    assert desired_replicas(1, 8, True, hpa_min_replicas=1, primary_hpa=False) == ReplicaPlan(None, None)


def test_twin_left_without_target_hpa_still_owns_the_primary():
    # The user's HPA was just deleted; the twin goes this tick, the primary is not written meanwhile.
    assert desired_replicas(5, 3, False, primary_hpa=True) == ReplicaPlan(primary=None, target=0)


# -- handing back on deletion --------------------------------------------------------------------


@pytest.mark.parametrize(("target", "primary", "expected"), [
    (0, 4, 4),        # idle: the target takes the primary's count
    (2, 4, 4),        # an HPA's canary count is raised to carry all traffic
    (6, 4, None),     # never lowered
    (4, 4, None),
    (0, None, 1),     # no primary: at least one replica
    (None, None, None),
])
def test_handover(target, primary, expected):
    assert handover_replicas(target, primary) == expected
