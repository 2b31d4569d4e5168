"""`make demo` keeps working: the demo runs unattended to the end and writes its PNG."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]


def test_demo_promotes_then_rolls_back_and_writes_the_timeline(tmp_path):
    png = tmp_path / "timeline.png"
    result = subprocess.run([sys.executable, "-m", "canarist.devstack.demo", "--fast", "--output", str(png)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    print(out)
    assert "release 1: Succeeded; release 2: RolledBack" in out
    assert "quality=" in out and "promoted" in out
    assert "evidence at confidence 0.99 that the canary is worse than tolerated" in out
    # The rolled-back release is a prompt edit in a ConfigMap, released like a new image.
    assert "released because: ConfigMap 'support-bot-prompts' changed" in out
    assert "the primary's copy support-bot-prompts-primary still holds the stable prompt" in out
    # Both releases start in shadow; the worse one is stopped there, before any user saw its answers.
    assert "shadow Passed:" in out and "shadow Failed:" in out
    assert "rolled back revision" in out and "in shadow (100% of requests mirrored; no user was served" in out
    assert " mirrored copies and 0 user requests with the edited prompt" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "nothing of the demo is left running" in out
    left = subprocess.run(["hack/check-no-leftovers.sh", "canarist-demo"], capture_output=True, text=True)
    assert left.returncode == 0, left.stderr
