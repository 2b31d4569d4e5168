"""`canarist` / `kubectl canarist`: the entry point. Command groups register their subparsers here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import judge, releases

# Each command group: a module with `register(subparsers)` whose leaf parsers set `func(args) -> int`.
COMMAND_GROUPS = (releases, judge)


def _prog() -> str:
    name = os.path.basename(sys.argv[0] or "canarist")
    return "kubectl canarist" if name.startswith("kubectl-") else "canarist"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or _prog(),
        description="canarist: progressive delivery of AI-backed services, judged by real traffic.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except releases.CliError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
