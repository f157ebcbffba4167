"""``run``: start the server and workers; run a demo to completion or serve the queue.

While it works, stderr shows a live progress display on a terminal and plain
``progress:`` lines otherwise (``progress.py``); ``--json`` prints nothing but the
final report on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from typing import Any, cast

from .. import __version__, keys
from ..config import STATE_KINDS, default_workers
from ..connection import redact
from ..demo import DEMO_TASK, register_limited_demo
from ..log import configure as configure_logging
from ..orchestrator import ContinuousOrchestrator
from ..state import StateManager, state_dir_for
from .common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    SUBMIT_CHUNK,
    Signals,
    add_common_options,
    add_worker_options,
    import_task_modules,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    rate,
    rate_limit,
    say,
    settings_from,
)
from .progress import Display, Sampler, make_display


def add_parser(commands: Any) -> None:
    run = commands.add_parser("run", help="start the server and workers; run a demo or serve the queue")
    add_common_options(run)
    add_worker_options(run)
    run.add_argument("--demo", type=non_negative_int, metavar="COUNT", help="submit COUNT demo tasks, exit when done")
    run.add_argument("--demo-ms", type=non_negative_float, default=0.0, metavar="MS", help="demo task sleep (ms)")
    run.add_argument("--demo-fail-rate", type=rate, default=0.0, metavar="P", help="share of demo tasks that fail")
    run.add_argument("--demo-rate", type=rate_limit, default=None, metavar="RATE",
                     help="limit the demo tasks to RATE (e.g. 50/s, 3000/m) across all workers")
    run.add_argument("--durability", choices=("fast", "strict"), default=None, help="appendfsync everysec | always")
    run.add_argument(
        "--state",
        choices=STATE_KINDS,
        default=None,
        help="state manager: lockfree (default), locked (lock-based baseline), file (legacy files, no server)",
    )
    run.add_argument(
        "--shards",
        type=positive_int,
        default=None,
        metavar="N",
        help="split the lock-free data into N hash-tagged shards; fixed by whoever writes first "
        "(default: one per master on a Redis Cluster, none on one server)",
    )
    run.add_argument(
        "--progress-interval",
        type=positive_float,
        default=1.0,
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (default 1)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object at the end and nothing else")
    run.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """Run a demo (``--demo``) or serve until a signal; returns the exit code."""
    settings = settings_from(
        args,
        workers=args.workers or default_workers(),
        batch_size=args.batch,
        lease_s=args.lease,
        durability=args.durability,
        state=args.state,
        shards=args.shards,
    )
    configure_logging(settings.log_level if not args.json else "WARNING", settings.log_json)
    warn_about_many_workers(settings.workers)
    import_task_modules(args.imports)
    demo_task = register_limited_demo(args.demo_rate) if args.demo_rate else DEMO_TASK
    signals = Signals()
    signals.install()
    orch = ContinuousOrchestrator(settings=settings)
    started = time.monotonic()
    with orch:
        if orch.server is not None and not args.json:
            say(f"orchestrator_mp {__version__}: redis-server pid {orch.server.pid}, db {orch.server.db_path}")
            say(f"socket: {orch.server.socket_path}")
            say(f"watch live: {orch.monitor_command()}")
            db = shlex.quote(settings.db_path)
            say(f"from another terminal: python -m orchestrator_mp status --watch --db {db}  (or: monitor, metrics)")
        if orch.server is None and orch.url is not None and not args.json:
            state = cast(StateManager, orch.state)  # running: inside `with orch`
            shards = state.shard_count
            kind = "a Redis Cluster" if state.on_cluster else "one Redis server"
            layout = f", data in {shards} shards" if shards > 1 else ""
            say(f"orchestrator_mp {__version__}: {kind} at {redact(orch.url)}{layout}")
            say("other hosts join with: python -m orchestrator_mp worker --redis-url URL  (and: status, monitor)")
        if orch.server is None and orch.url is None and not args.json:
            where = state_dir_for(orch.settings.db_path)
            say(f"orchestrator_mp {__version__}: {orch.settings.state} state in {where} (no Redis server)")
        if not args.json:
            say(f"{settings.workers} worker(s) started: {summarize_ids(orch.worker_ids())}")
        before = orch.counters()
        backlog = orch.pending()  # tasks left queued by earlier runs are waited for too
        total = backlog + args.demo if args.demo is not None else None
        submitted = 0
        display = make_display(args.json, total, args.progress_interval)
        try:
            if args.demo is not None:
                started = time.monotonic()
                sampler = Sampler(orch, before, total)
                for start in range(0, args.demo, SUBMIT_CHUNK):
                    if signals.count:
                        break  # Ctrl-C while submitting: stop submitting at once
                    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
                        ((i, args.demo_ms, args.demo_fail_rate), {})
                        for i in range(start, min(args.demo, start + SUBMIT_CHUNK))
                    ]
                    orch.submit_many(demo_task, calls, results=False)
                    submitted += len(calls)
                    display.update(sampler.sample())
                drained = _wait_for_demo(orch, signals, sampler, display)
            else:
                serve(orch, signals, Sampler(orch, before, None), display, quiet=args.json)
                drained = orch.pending() == 0
        finally:
            display.close()
        elapsed = time.monotonic() - started
        if not args.json and signals.count:
            say("stopping: finishing running tasks (a second Ctrl-C kills the workers)")
        orch.stop_workers(force=lambda: signals.count > 1)
        report = _run_report(orch, before, submitted, elapsed)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_run_summary(report)
    if args.demo is not None and not drained:
        left = report["pending"]["pending"] + report["pending"]["inflight"]
        say(f"stopped before the demo finished: {left} task(s) remain queued and resume on the next start")
        return EXIT_INTERRUPTED if signals.count else EXIT_FAILURE
    return EXIT_OK


def _wait_for_demo(orch: ContinuousOrchestrator, signals: Signals, sampler: Sampler, display: Display) -> bool:
    while not signals.count:
        drained = orch.wait(timeout=0.25)
        display.update(sampler.sample())
        if drained:
            return True
    return False


def serve(orch: ContinuousOrchestrator, signals: Signals, sampler: Sampler, display: Display, quiet: bool) -> None:
    """Serve the queue until a signal (or until workers keep dying: WorkerDied)."""
    if not quiet:
        say("serving the queue; Ctrl-C to stop")
    while not signals.count:
        time.sleep(0.25)
        orch.check_health()
        display.update(sampler.sample())


def _run_report(orch: ContinuousOrchestrator, before: dict[str, int], submitted: int, elapsed: float) -> dict[str, Any]:
    counters = orch.counters()
    delta = {name: counters[name] - before.get(name, 0) for name in counters}
    settled = delta[keys.TOTAL_WORK_COMPLETED] + delta[keys.TOTAL_DEAD_LETTERED]
    audit = orch.audit()
    return {
        keys.TOTAL_WORK_CREATED: counters[keys.TOTAL_WORK_CREATED],
        keys.TOTAL_WORK_COMPLETED: counters[keys.TOTAL_WORK_COMPLETED],
        keys.TOTAL_ERRORS: counters[keys.TOTAL_ERRORS],
        "state": orch.settings.state,
        "shards": audit.get("shards", 1),
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
    of_submitted = f" of {run['submitted']} submitted" if run["submitted"] else ""
    say(
        f"done: {run['completed']} completed, {run['errors']} errors{of_submitted} "
        f"in {report['elapsed_s']:.2f}s ({report['throughput_per_s']:.0f} tasks/s); "
        f"counters consistent: {report['consistent']}"
    )
    for worker_id, counts in sorted(report["workers"].items()):
        say(f"  {worker_id}: {counts['completed']} completed, {counts['errors']} errors")


# Worker processes per CPU above which a start is slow and the machine oversubscribed:
# each worker is a forked process with its own connection (I/O-bound tasks may still
# want many; coroutine tasks overlap inside one worker instead).
WORKERS_PER_CPU_WARNING = 8
WORKERS_WARNING_FLOOR = 64


def warn_about_many_workers(workers: int) -> None:
    """Say so before starting far more worker processes than there are CPUs."""
    cpus = os.cpu_count() or 1
    if workers > max(WORKERS_WARNING_FLOOR, WORKERS_PER_CPU_WARNING * cpus):
        say(
            f"warning: {workers} worker processes on {cpus} CPU(s) will take a while to start and compete for "
            "the CPUs; for I/O-bound work, coroutine tasks (async def) overlap inside fewer workers"
        )


def summarize_ids(ids: list[str], shown: int = 4) -> str:
    """Worker ids for a log line: all of a few, the first and last of many."""
    if len(ids) <= 2 * shown:
        return ", ".join(ids)
    return f"{', '.join(ids[:shown])}, ... ({len(ids) - 2 * shown} more), {', '.join(ids[-shown:])}"
