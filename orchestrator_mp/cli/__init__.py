"""Command line: parse arguments, build Settings, call the library, return an exit code.

    python -m orchestrator_mp run [--workers N] [--db PATH] [--demo COUNT] [--json] ...
    python -m orchestrator_mp worker [--redis-url URL | --db PATH] [--workers N]
    python -m orchestrator_mp enqueue TASK [--args JSON] [--kwargs JSON] [--db PATH]
    python -m orchestrator_mp status [--db PATH] [--json] [--watch]
    python -m orchestrator_mp monitor [--db PATH] [--stream NAME] [--worker ID] [--since WHEN] [--json]
    python -m orchestrator_mp metrics [--db PATH] [--port PORT] [--host ADDR]
    python -m orchestrator_mp redis-cli [--db PATH] [ARG ...]
    python -m orchestrator_mp result ID [--wait S] [--json]
    python -m orchestrator_mp dlq list|retry|purge [ID ...|--all] [--json]
    python -m orchestrator_mp bench [--workers 1,2,4,8] [--quick] [--check --min-ratio R]

One module per command, each with ``add_parser(commands)``. Human-readable lines go
to stderr; stdout carries only the requested output (the final JSON with ``--json``).

The command line is an application of the library: :func:`main` registers the demo
task (``run --demo``, ``enqueue demo``, workers serving such tasks) and each command
configures logging for itself (``log.configure``), neither of which the library does.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .. import __version__
from ..demo import register_demo
from ..exceptions import (
    ConfigurationError,
    OrchestratorError,
    ServerError,
    TaskError,
    WorkerDied,
)
from . import (
    bench,
    dlq,
    enqueue,
    metrics,
    monitor,
    redis_cli,
    result,
    run,
    status,
    worker,
)
from .common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_SERVER,
    EXIT_WORKER_DIED,
    Parser,
    say,
)

COMMANDS = (run, worker, enqueue, status, result, dlq, monitor, metrics, redis_cli, bench)

# Library errors mapped to the exit code the CLI returns for them (first match wins).
EXIT_CODES: tuple[tuple[type[OrchestratorError], int], ...] = (
    (ConfigurationError, EXIT_CONFIG),
    (TaskError, EXIT_CONFIG),
    (ServerError, EXIT_SERVER),
    (WorkerDied, EXIT_WORKER_DIED),
    (OrchestratorError, EXIT_FAILURE),
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="orchestrator-mp", description="A lock-free process orchestrator on embedded Redis.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    register_demo()
    try:
        code: int = args.handler(args)
        return code
    except OrchestratorError as exc:
        say(f"{parser.prog} {args.command}: error: {exc}")
        return next(code for kind, code in EXIT_CODES if isinstance(exc, kind))


__all__ = ["main", "build_parser"]
