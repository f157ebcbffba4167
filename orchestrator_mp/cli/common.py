"""Shared pieces of the command line: exit codes, argument types, common options."""
from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
from typing import Any, NoReturn

from ..config import Settings
from ..exceptions import ConfigurationError
from ..limits import parse_rate

EXIT_OK = 0
EXIT_FAILURE = 1  # the run finished but not every task completed
EXIT_CONFIG = 2  # bad arguments or settings
EXIT_SERVER = 3  # the Redis server could not start, was in use, or died
EXIT_WORKER_DIED = 4  # workers kept dying
EXIT_INTERRUPTED = 130  # stopped by a signal before the work was done

SUBMIT_CHUNK = 5_000  # tasks per submit transaction (and per progress update while submitting)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``orchestrator-mp run: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def int_at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value

    return parse


non_negative_int = int_at_least(0)
positive_int = int_at_least(1)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def rate(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a rate between 0 and 1, got {text}")
    return value


def rate_limit(text: str) -> str:
    """A rate such as ``50/s`` or ``3000/m`` (checked now, used as text)."""
    try:
        parse_rate(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def json_value(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"expected a JSON {kind.__name__}, got {type(value).__name__}")
        return value

    return parse


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=Settings().db_path, metavar="PATH", help="database file (default: %(default)s)")
    parser.add_argument("--redis-url", metavar="URL", help="use this Redis server instead of the embedded one")
    parser.add_argument("--log-level", metavar="LEVEL", help="TRACE..CRITICAL (env ORCHESTRATOR_MP_LOG_LEVEL)")
    parser.add_argument("--log-json", metavar="FILE", help="also write JSON-lines logs to FILE")
    parser.add_argument(
        "--allow-eviction",
        action="store_true",
        help="UNSAFE: accept a --redis-url server whose maxmemory-policy is not noeviction "
        "(evicted keys lose queued tasks, leases and results)",
    )


def settings_from(args: argparse.Namespace, **fields: Any) -> Settings:
    values: dict[str, Any] = {
        "db_path": args.db,
        "redis_url": args.redis_url,
        "log_json": args.log_json,
        "allow_eviction": args.allow_eviction,
    }
    if args.log_level:
        values["log_level"] = args.log_level
    values.update({k: v for k, v in fields.items() if v is not None})
    return Settings(**values)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Signals:
    """First SIGINT/SIGTERM asks for a warm stop, the second for a cold one."""

    def __init__(self) -> None:
        self.count = 0

    def handle(self, _signum: int, _frame: object) -> None:
        self.count += 1

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)




def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """Options of every command that starts workers (``run``, ``worker``)."""
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N", help="worker processes (default: CPUs)")
    parser.add_argument("--batch", type=positive_int, default=None, metavar="K", help="most tasks claimed per round trip")
    parser.add_argument(
        "--lease",
        type=positive_float,
        default=None,
        metavar="S",
        help="seconds these workers count as alive without a heartbeat (default 3; on a Redis Cluster, "
        "above cluster-node-timeout keeps them through a failover)",
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first, to register its tasks (repeatable)",
    )


def import_task_modules(modules: list[str]) -> None:
    """Import the ``--import`` modules, so their ``@task`` registrations exist before workers fork."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(f"--import {module}: {exc}") from None
