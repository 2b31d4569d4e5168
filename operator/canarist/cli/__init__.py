"""The user CLI: `canarist ...`, also installed as `kubectl-canarist` (`kubectl canarist ...`).

One module per command group, each with `register(subparsers)`; `main.py` assembles them.
"""
