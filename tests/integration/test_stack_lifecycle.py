"""No process of a local stack outlives the process that started it, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from canarist.devstack.procs import pid_alive, wait_until

pytestmark = pytest.mark.cluster

STARTER = textwrap.dedent("""
    import sys, time
    from canarist.devstack.stack import LocalStack
    stack = LocalStack(sys.argv[1], nodes=1).start()
    print(" ".join(map(str, stack.cluster.pids() + [stack.prometheus._pid, stack._reaper.pid])), flush=True)
    time.sleep(600)
""")


def test_stack_is_reaped_when_its_owner_is_killed(tmp_path: Path):
    name = f"canarist-reap-{os.getpid()}"
    owner = subprocess.Popen([sys.executable, "-c", STARTER, name], stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) >= 7, f"expected cluster, prometheus and reaper pids, got {line!r}"
        assert all(pid_alive(p) for p in pids)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        wait_until(lambda: not any(pid_alive(p) for p in pids), 60, "every stack process to stop")
    finally:
        owner.kill()
        owner.wait()
    leftovers = subprocess.run(["hack/check-no-leftovers.sh", name], cwd=Path(__file__).resolve().parents[2],
                               capture_output=True, text=True)
    assert leftovers.returncode == 0, leftovers.stderr
