"""`canarist judge ...`: the LLM-judge service.

    canarist judge serve --llm-base-url http://127.0.0.1:8000/v1 --model judge-model --db /data/judge.db

Every flag of `serve` falls back to an environment variable CANARIST_JUDGE_<FLAG> (for example
CANARIST_JUDGE_SAMPLE_RATE); see `canarist judge serve --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from canarist.judge.config import ConfigError, JudgeConfig, add_arguments

LOG_LEVELS = ("debug", "info", "warning", "error")


def register(commands: argparse._SubParsersAction) -> None:
    judge = commands.add_parser("judge", help="the LLM-judge service",
                                description="The LLM-judge service (docs/judge-protocol.md).")
    sub = judge.add_subparsers(dest="judge_command", metavar="COMMAND", required=True)
    serve = sub.add_parser(
        "serve", help="serve the judge HTTP API until SIGTERM or SIGINT",
        description="Receive samples, score them with an LLM in the background, answer verdicts. "
                    "Flags fall back to CANARIST_JUDGE_* environment variables, then to defaults.")
    add_arguments(serve)
    serve.add_argument("--port-file", metavar="PATH", default=None,
                       help="write the bound port here once listening (useful with --listen 127.0.0.1:0)")
    serve.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                       help="[env CANARIST_JUDGE_LOG_LEVEL; default: info]")
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from canarist.judge.service import serve  # aiohttp and friends only when serving

    level = args.log_level or os.environ.get("CANARIST_JUDGE_LOG_LEVEL", "").strip().lower() or "info"
    if level not in LOG_LEVELS:
        print(f"canarist judge serve: error: CANARIST_JUDGE_LOG_LEVEL: must be one of {', '.join(LOG_LEVELS)}, "
              f"got {level!r}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "debug":
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        config = JudgeConfig.from_sources(args, os.environ)
    except ConfigError as exc:
        print(f"canarist judge serve: error: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        await serve(config, port_file=args.port_file)

    try:
        asyncio.run(run())
    except ConfigError as exc:
        print(f"canarist judge serve: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the address is in use, the database directory is missing, ...
        print(f"canarist judge serve: error: {exc}", file=sys.stderr)
        return 1
    return 0
