"""Rollback latency: from the check that exhausts failureLimit to 100 % of traffic on the primary.

    .venv/bin/python bench/rollback_latency.py [--runs 3]

Runs the real end-to-end rollback test (operator process, local cluster, Prometheus, traffic
through the stack's gateway to the pods) `--runs` times and prints what it measured each time.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/e2e/test_rollout.py::test_error_rate_violation_at_5_percent_rolls_back_in_the_same_tick"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    figures = []
    for _ in range(args.runs):
        # In the local stack's own network namespace, where its pods' processes listen (hack/in-netns.sh).
        out = subprocess.run([str(ROOT / "hack" / "in-netns.sh"), sys.executable, "-m", "pytest", "-q", "-s", TEST],
                             cwd=ROOT, capture_output=True, text=True, timeout=600).stdout
        found = re.search(r"violating check -> 100% primary: ([0-9.]+)s", out)
        if not found:
            print(out[-3000:], file=sys.stderr)
            return 1
        figures.append(float(found.group(1)))
    print(f"violating check -> HTTPRoute 100% primary, {args.runs} runs: "
          + ", ".join(f"{f:.3f}s" for f in figures) + f"  (max {max(figures):.3f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
