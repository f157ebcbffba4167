"""Command line: parse arguments, build Settings, call the library, return an exit code.

    python -m orchestrator_mp run [--workers N] [--db PATH] [--demo COUNT] [--json] ...
    python -m orchestrator_mp enqueue TASK [--args JSON] [--kwargs JSON] [--db PATH]
    python -m orchestrator_mp status [--db PATH] [--json]

Human-readable lines go to stderr; stdout carries only the requested output
(the final JSON with ``--json``), so scripts can pipe it.
"""
from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import time
from typing import Any, Sequence

from . import __version__, keys
from .config import Settings, default_workers
from .exceptions import (
    ConfigurationError,
    OrchestratorError,
    PayloadError,
    ServerError,
    TaskError,
    WorkerDied,
)
from .log import configure as configure_logging
from .models import Task
from .orchestrator import ContinuousOrchestrator, open_state
from .demo import DEMO_TASK

EXIT_OK = 0
EXIT_FAILURE = 1  # the run finished but not every task completed
EXIT_CONFIG = 2  # bad arguments or settings
EXIT_SERVER = 3  # the Redis server could not start, was in use, or died
EXIT_WORKER_DIED = 4  # workers kept dying
EXIT_INTERRUPTED = 130  # stopped by a signal before the work was done

SUBMIT_CHUNK = 10_000


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``orchestrator-mp run: error: ...``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def _int_at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value

    return parse


_non_negative_int = _int_at_least(0)
_positive_int = _int_at_least(1)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _rate(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a rate between 0 and 1, got {text}")
    return value


def _json_value(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"expected a JSON {kind.__name__}, got {type(value).__name__}")
        return value

    return parse


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=Settings().db_path, metavar="PATH", help="database file (default: %(default)s)")
    parser.add_argument("--redis-url", metavar="URL", help="use this Redis server instead of the embedded one")
    parser.add_argument("--log-level", metavar="LEVEL", help="TRACE..CRITICAL (env ORCHESTRATOR_MP_LOG_LEVEL)")
    parser.add_argument("--log-json", metavar="FILE", help="also write JSON-lines logs to FILE")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="orchestrator-mp", description="A lock-free process orchestrator on embedded Redis.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser("run", help="start the server and workers; run a demo or serve the queue")
    _add_common(run)
    run.add_argument("--workers", type=_positive_int, default=None, metavar="N", help="worker processes (default: CPUs)")
    run.add_argument("--demo", type=_non_negative_int, metavar="COUNT", help="submit COUNT demo tasks, exit when done")
    run.add_argument("--demo-ms", type=_non_negative_float, default=0.0, metavar="MS", help="demo task sleep (ms)")
    run.add_argument("--demo-fail-rate", type=_rate, default=0.0, metavar="P", help="share of demo tasks that fail")
    run.add_argument("--batch", type=_positive_int, default=None, metavar="K", help="most tasks claimed per round trip")
    run.add_argument("--durability", choices=("fast", "strict"), default=None, help="appendfsync everysec | always")
    run.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                     help="import MODULE first, to register its tasks (repeatable)")
    run.add_argument("--json", action="store_true", help="print one JSON object at the end and nothing else")
    run.set_defaults(handler=cmd_run)

    enqueue = commands.add_parser("enqueue", help="submit one task (works whether or not the orchestrator runs)")
    _add_common(enqueue)
    enqueue.add_argument("task", metavar="TASK", help="registered task name")
    enqueue.add_argument("--args", type=_json_value(list), default=[], metavar="JSON", help="positional args (a JSON list)")
    enqueue.add_argument("--kwargs", type=_json_value(dict), default={}, metavar="JSON", help="keyword args (JSON object)")
    enqueue.add_argument("--count", type=_positive_int, default=1, metavar="N", help="submit N copies")
    enqueue.add_argument("--json", action="store_true", help="print the task ids as JSON")
    enqueue.set_defaults(handler=cmd_enqueue)

    status = commands.add_parser("status", help="workers, counters and queue depths of a database")
    _add_common(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=cmd_status)
    return parser


def _settings(args: argparse.Namespace, **fields: Any) -> Settings:
    values: dict[str, Any] = {"db_path": args.db, "redis_url": args.redis_url, "log_json": args.log_json}
    if args.log_level:
        values["log_level"] = args.log_level
    values.update({k: v for k, v in fields.items() if v is not None})
    return Settings(**values)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Signals:
    """First SIGINT/SIGTERM asks for a warm stop, the second for a cold one."""

    def __init__(self) -> None:
        self.count = 0

    def handle(self, _signum: int, _frame: object) -> None:
        self.count += 1

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)


# -- run ----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(
        args, workers=args.workers or default_workers(), batch_size=args.batch, durability=args.durability
    )
    configure_logging(settings.log_level if not args.json else "WARNING", settings.log_json)
    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(f"--import {module}: {exc}") from None
    signals = _Signals()
    signals.install()
    orch = ContinuousOrchestrator(settings=settings)
    started = time.monotonic()
    with orch:
        if orch.server is not None and not args.json:
            _say(f"orchestrator_mp {__version__}: redis-server pid {orch.server.pid}, db {orch.server.db_path}")
            _say(f"socket: {orch.server.socket_path}")
            _say(f"watch live: {orch.monitor_command()}")
        if not args.json:
            _say(f"{settings.workers} worker(s) started: {', '.join(orch.worker_ids())}")
        before = orch.counters()
        submitted = 0
        if args.demo is not None:
            started = time.monotonic()
            for start in range(0, args.demo, SUBMIT_CHUNK):
                calls = [((i, args.demo_ms, args.demo_fail_rate), {}) for i in range(start, min(args.demo, start + SUBMIT_CHUNK))]
                orch.submit_many(DEMO_TASK, calls)
                submitted += len(calls)
            drained = _wait_for_demo(orch, signals, before, submitted, quiet=args.json)
        else:
            _serve(orch, signals, quiet=args.json)
            drained = orch.pending() == 0
        elapsed = time.monotonic() - started
        if not args.json and signals.count:
            _say("stopping: finishing running tasks (a second Ctrl-C kills the workers)")
        orch.stop_workers(timeout=0.5 if signals.count > 1 else None)
        report = _run_report(orch, before, submitted, elapsed)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_run_summary(report)
    if args.demo is not None and not drained:
        left = report["pending"]["pending"] + report["pending"]["inflight"]
        _say(f"stopped before the demo finished: {left} task(s) remain queued and resume on the next start")
        return EXIT_INTERRUPTED if signals.count else EXIT_FAILURE
    return EXIT_OK


def _wait_for_demo(orch: ContinuousOrchestrator, signals: _Signals, before: dict, submitted: int, quiet: bool) -> bool:
    last_line = time.monotonic()
    while not signals.count:
        if orch.wait(timeout=0.25):
            return True
        if not quiet and time.monotonic() - last_line >= 1.0:
            now = orch.counters()
            done = now[keys.TOTAL_WORK_COMPLETED] - before[keys.TOTAL_WORK_COMPLETED]
            errors = now[keys.TOTAL_ERRORS] - before[keys.TOTAL_ERRORS]
            _say(f"progress: {done + errors}/{submitted} settled ({done} completed, {errors} errors)")
            last_line = time.monotonic()
    return False


def _serve(orch: ContinuousOrchestrator, signals: _Signals, quiet: bool) -> None:
    if not quiet:
        _say("serving the queue; Ctrl-C to stop")
    while not signals.count:
        time.sleep(0.2)


def _run_report(orch: ContinuousOrchestrator, before: dict, submitted: int, elapsed: float) -> dict[str, Any]:
    counters = orch.counters()
    delta = {name: counters[name] - before.get(name, 0) for name in counters}
    settled = delta[keys.TOTAL_WORK_COMPLETED] + delta[keys.TOTAL_DEAD_LETTERED]
    audit = orch.audit()
    return {
        keys.TOTAL_WORK_CREATED: counters[keys.TOTAL_WORK_CREATED],
        keys.TOTAL_WORK_COMPLETED: counters[keys.TOTAL_WORK_COMPLETED],
        keys.TOTAL_ERRORS: counters[keys.TOTAL_ERRORS],
        "elapsed_s": round(elapsed, 3),
        "throughput_per_s": round(settled / elapsed, 1) if elapsed > 0 else 0.0,
        "run": {
            "submitted": submitted,
            "completed": delta[keys.TOTAL_WORK_COMPLETED],
            "errors": delta[keys.TOTAL_ERRORS],
            "dead_lettered": delta[keys.TOTAL_DEAD_LETTERED],
            "requeued": delta[keys.TOTAL_REQUEUED],
        },
        "counters": counters,
        "pending": {"pending": audit["queues"]["pending"], "inflight": audit["queues"]["inflight"]},
        "consistent": audit["ok"],
        "checks": audit["checks"],
        "workers": orch.worker_counters(),
    }


def _print_run_summary(report: dict[str, Any]) -> None:
    run = report["run"]
    _say(
        f"done: {run['completed']} completed, {run['errors']} errors of {run['submitted']} submitted "
        f"in {report['elapsed_s']:.2f}s ({report['throughput_per_s']:.0f} tasks/s); "
        f"counters consistent: {report['consistent']}"
    )
    for worker_id, counts in sorted(report["workers"].items()):
        _say(f"  {worker_id}: {counts['completed']} completed, {counts['errors']} errors")


# -- enqueue ------------------------------------------------------------------------------
def cmd_enqueue(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.log_level if not args.json else "WARNING", settings.log_json)
    tasks = [Task(name=args.task, args=tuple(args.args), kwargs=args.kwargs) for _ in range(args.count)]
    raws = [t.to_json() for t in tasks]
    for raw in raws:
        if len(raw) > settings.max_payload_bytes:
            raise PayloadError({"name": args.task}, f"task is {len(raw)} bytes, over {settings.max_payload_bytes}")
    with open_state(settings, role="enqueue") as state:
        state.submit(raws)
    ids = [t.id for t in tasks]
    if args.json:
        print(json.dumps({"task_ids": ids, "task": args.task}))
    else:
        print("\n".join(ids))
    return EXIT_OK


# -- status -------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.log_level if not args.json else "WARNING", settings.log_json)
    with open_state(settings, role="status") as state:
        report = status_report(state)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_status(report)
    return EXIT_OK


def status_report(state: Any) -> dict[str, Any]:
    active = sorted(state.active_workers())
    known = sorted(state.known_workers())
    states = state.batch_get_worker_states(known)
    counts = state.worker_counters(known)
    audit = state.audit()
    workers = {w: {**states.get(w, {}), **counts.get(w, {})} for w in known}
    return {
        "active_workers": active,
        "counters": audit["counters"],
        "workers": workers,
        "queues": audit["queues"],
        "consistent": audit["ok"],
        "checks": audit["checks"],
    }


def _print_status(report: dict[str, Any]) -> None:
    now = time.time()
    out = sys.stdout
    print(f"active workers: {len(report['active_workers'])}", file=out)
    header = f"{'worker':<40} {'pid':>7} {'status':<8} {'done':>8} {'errors':>6} {'ver':>6} {'ep':>3} {'idle':>7}  task"
    live = [w for w in report["workers"] if w in set(report["active_workers"])]
    if live:
        print(header, file=out)
    for worker_id in live:
        info = report["workers"][worker_id]
        age = now - float(info.get("last_activity") or now)
        print(
            f"{worker_id:<40} {info.get('pid', ''):>7} {info.get('status', ''):<8} {info.get('completed', 0):>8} "
            f"{info.get('errors', 0):>6} {info.get('version', ''):>6} {info.get('epoch', ''):>3} {age:>6.1f}s  "
            f"{info.get('current_task', '')}",
            file=out,
        )
    others = len(report["workers"]) - len(live)
    if others:
        print(f"({others} stopped or dead worker partition(s) kept for their counters)", file=out)
    queues = report["queues"]
    print(
        f"queue: {queues['pending']} pending, {queues['inflight']} in flight, {queues['dead_letter']} dead-lettered",
        file=out,
    )
    counters = ", ".join(f"{name}={value}" for name, value in report["counters"].items())
    print(f"counters: {counters}", file=out)
    print(f"consistent: {report['consistent']}", file=out)


# -- entry ----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        return args.handler(args)
    except ConfigurationError as exc:
        _say(f"{parser.prog} {args.command}: error: {exc}")
        return EXIT_CONFIG
    except (PayloadError, TaskError) as exc:
        _say(f"{parser.prog} {args.command}: error: {exc}")
        return EXIT_CONFIG
    except ServerError as exc:
        _say(f"{parser.prog} {args.command}: error: {exc}")
        return EXIT_SERVER
    except WorkerDied as exc:
        _say(f"{parser.prog} {args.command}: error: {exc}")
        return EXIT_WORKER_DIED
    except OrchestratorError as exc:
        _say(f"{parser.prog} {args.command}: error: {exc}")
        return EXIT_FAILURE


__all__ = ["main", "build_parser"]
