"""Names and labels canarist derives from the target stay valid Kubernetes names and labels."""

from __future__ import annotations

import re

from canarist.kube.workloads import primary_label_value, primary_labels, selects

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def test_short_values_get_the_readable_suffix():
    assert primary_labels({"app": "web", "tier": "api"}) == {"app": "web-primary", "tier": "api-primary"}


def test_long_values_stay_valid_and_distinct():
    long_a = "a" * 60
    long_b = "a" * 59 + "b"
    for value in (long_a, long_b, "x" * 63, "a-" * 30 + "z", "v1.2.3_" + "q" * 56):
        derived = primary_label_value(value)
        assert len(derived) <= 63 and LABEL_VALUE.match(derived), derived
        assert derived.endswith("-primary")
    assert primary_label_value(long_a) != primary_label_value(long_b)


def test_empty_value_maps_to_a_valid_label():
    assert primary_label_value("") == "primary"


def test_selects_needs_every_selector_label_and_never_matches_an_empty_selector():
    pods = {"app": "web", "tier": "api"}
    assert selects({"app": "web"}, pods)
    assert not selects({"app": "web", "tier": "db"}, pods)
    assert not selects({}, pods) and not selects(None, pods)
