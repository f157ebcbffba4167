"""``status``: workers, counters, queue depths and consistency checks of a database."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..log import configure as configure_logging
from ..orchestrator import open_state
from ..state import StateManager
from .common import EXIT_OK, add_common_options, settings_from


def add_parser(commands: Any) -> None:
    status = commands.add_parser("status", help="workers, counters and queue depths of a database")
    add_common_options(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging(settings.log_level if not args.json else "WARNING", settings.log_json)
    with open_state(settings, role="status") as state:
        report = status_report(state)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_status(report)
    return EXIT_OK


def status_report(state: StateManager) -> dict[str, Any]:
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


