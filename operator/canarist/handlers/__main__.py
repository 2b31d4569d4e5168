"""`python -m canarist.handlers [kopf run options]`: run the operator like `kopf run -m canarist.handlers`."""

import sys

from kopf.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "-m", "canarist.handlers", *sys.argv[1:]]))
