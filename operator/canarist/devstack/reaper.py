"""`python -m canarist.devstack.reaper OWNER_PID NAME WORKDIR`: stop the stack once OWNER_PID exits."""

import sys
from pathlib import Path

from .stack import reap_when_gone

if __name__ == "__main__":
    reap_when_gone(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
