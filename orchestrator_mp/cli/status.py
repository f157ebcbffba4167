"""``status``: workers, queue depths, totals, throughput and latency of a database.

A table per worker (id, pid, host, status, current task, time since its last
activity, completed, errors, version/epoch), then queue / in-flight / dead-letter
depths, the counters, recent throughput and latency percentiles computed from the
streams of every shard (see ``events.py``). ``--json`` prints the same as one object;
``--watch`` refreshes in place on a terminal (a new frame every interval
otherwise) and, like ``monitor``, only attaches to a live owner: it never keeps
a ``run`` from starting.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..connection import GONE
from ..database import Attachment, open_state
from ..log import configure as configure_logging
from ..reading import read_snapshot
from ..state import StateManager
from .common import (
    EXIT_OK,
    Signals,
    add_common_options,
    positive_float,
    say,
    settings_from,
)

PIPE_WIDTH = 160  # columns of a frame written to a pipe or file (a terminal uses its own width)
LATENCY_NAMES = {"queue_wait_ms": "queue wait", "run_ms": "run time"}


def add_parser(commands: Any) -> None:
    status = commands.add_parser("status", help="workers, queues, totals, throughput and latency of a database")
    add_common_options(status)
    status.add_argument("--json", action="store_true", help="print one JSON object (one per line with --watch)")
    status.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C")
    status.add_argument(
        "--interval", type=positive_float, default=1.0, metavar="S", help="seconds between --watch refreshes (default 1)"
    )
    status.add_argument("--all", action="store_true", help="list stopped and dead worker partitions too")
    status.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging(settings.log_level if not args.json else "WARNING", settings.log_json)
    if args.watch:
        return _watch(args, Attachment(settings))
    with open_state(settings, role="status") as state:
        report = status_report(state)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _console().print(render_status(report, show_all=args.all))
    return EXIT_OK


def status_report(state: StateManager) -> dict[str, Any]:
    """Everything ``status`` shows, as plain data (the ``--json`` object): the library's
    snapshot (:func:`orchestrator_mp.reading.read_snapshot`) with every partition, the
    exact audit and the figures of the streams."""
    return read_snapshot(state).as_dict()


# -- watching --------------------------------------------------------------------------------
def _watch(args: argparse.Namespace, attachment: Attachment) -> int:
    signals = Signals()
    signals.install()
    console = _console()
    live = console.is_terminal and not args.json
    waiting_said = False
    with attachment, (Live(console=console, auto_refresh=False) if live else _Plain()) as screen:
        while not signals.count:
            report = _attached_report(attachment)
            if report is None:
                message = f"no orchestrator serves {attachment.settings.db_path} right now; waiting (Ctrl-C to stop)"
                if live:
                    screen.update(Text(message), refresh=True)  # type: ignore[union-attr]  # live: a Live
                elif not waiting_said:
                    say(message)
                waiting_said = True
            elif live:
                screen.update(render_status(report, show_all=args.all), refresh=True)  # type: ignore[union-attr]  # as above
            else:
                waiting_said = False
                if args.json:
                    print(json.dumps(report), flush=True)
                else:
                    console.print(render_status(report, show_all=args.all))
                    console.print()
                    console.file.flush()
            _sleep(args.interval, signals)
    return EXIT_OK


def _attached_report(attachment: Attachment) -> dict[str, Any] | None:
    state = attachment.get()
    if state is None:
        return None
    try:
        return status_report(state)
    except GONE:
        attachment.reset()
        return None


def _sleep(seconds: float, signals: Signals) -> None:
    deadline = time.monotonic() + seconds
    while not signals.count and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


class _Plain:
    """Stands in for rich's Live when frames are printed one after another."""

    def __enter__(self) -> "_Plain":
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


# -- rendering -------------------------------------------------------------------------------
def _console() -> Console:
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        console = Console(file=sys.stdout, highlight=False, width=PIPE_WIDTH)
    return console


def render_status(report: dict[str, Any], show_all: bool = False) -> RenderableType:
    """The human-readable status: worker table, then one line per topic."""
    active = set(report["active_workers"])
    shown = [w for w in report["workers"] if show_all or w in active]
    statuses = [report["workers"][w].get("status", "?") for w in active if w in report["workers"]]
    by_status = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    parts: list[RenderableType] = [Text(f"active workers: {len(active)}" + (f" ({by_status})" if by_status else ""))]
    if shown:
        parts.append(_worker_table(report, shown, active))
    hidden = len(report["workers"]) - len(shown)
    if hidden:
        parts.append(Text(f"({hidden} stopped or dead worker partition(s) kept for their counters; --all lists them)"))
    queues = report["queues"]
    per_shard = ""
    if len(queues.get("by_shard", ())) > 1:
        per_shard = " (pending per shard: " + " / ".join(str(shard["pending"]) for shard in queues["by_shard"]) + ")"
    # Every place a task can wait is shown, so the line adds up to what was created
    # (delayed: retries and scheduled tasks; behind a key; waiting for a cap's slot).
    waiting = "".join(
        f", {queues[name]} {label}"
        for name, label in (("delayed", "delayed"), ("laned", "behind their key"), ("limited", "waiting for a slot"))
        if queues.get(name)
    )
    parts.append(
        Text(
            f"queue: {queues['pending']} pending, {queues['inflight']} in flight{waiting}, "
            f"{queues['dead_letter']} dead-lettered{per_shard}"
        )
    )
    parts.append(Text("counters: " + ", ".join(f"{name}={value}" for name, value in report["counters"].items())))
    if "throughput" in report:
        windows = [
            f"{rates['completed_per_s']:,.1f} completed/s, {rates['errors_per_s']:,.1f} errors/s (last {window})"
            for window, rates in report["throughput"].items()
        ]
        parts.append(Text("throughput: " + "; ".join(windows)))
    if "latency" in report:
        parts.append(_latency_table(report["latency"]))
    shards = report.get("shards", 1)
    parts.append(Text(f"consistent: {report['consistent']}" + (f" ({shards} shards, each checked)" if shards > 1 else "")))
    return Group(*parts)


def _worker_table(report: dict[str, Any], shown: list[str], active: set[str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name, justify in (
        ("worker", "left"),
        ("pid", "right"),
        ("host", "left"),
        ("status", "left"),
        ("task", "left"),
        ("last activity", "right"),
        ("completed", "right"),
        ("errors", "right"),
        ("ver/epoch", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]  # "left"/"right" literals
    now = report["time"]
    for worker_id in shown:
        info = report["workers"][worker_id]
        last = _float(info.get("last_activity"))
        age = f"{max(0.0, now - last):.1f}s" if last else "-"
        status = info.get("status", "?") if worker_id in active else info.get("status", "stopped")
        batch = info.get("batch")
        task = (info.get("current_task") or "")[:12]
        if task and batch and batch not in ("0", "1"):
            task += f" +{int(batch) - 1}"
        table.add_row(
            worker_id,
            str(info.get("pid", "")),
            str(info.get("host", "")),
            status,
            task or "-",
            age,
            f"{int(info.get('completed', 0)):,}",
            f"{int(info.get('errors', 0)):,}",
            f"v{info.get('version', '?')}/e{info.get('epoch', '?')}",
        )
    return table


def _latency_table(latency: dict[str, Any]) -> Table:
    counts = {latency[name]["count"] for name in LATENCY_NAMES if name in latency}
    title = f"latency over the newest {max(counts, default=0):,} tasks"
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title=title, title_justify="left")
    table.add_column("", no_wrap=True)
    for column in ("p50", "p95", "p99", "max", "from"):
        table.add_column(column, justify="right" if column != "from" else "left", no_wrap=True)
    for name, label in LATENCY_NAMES.items():
        summary = latency.get(name)
        if not summary:
            continue
        source = latency.get("sources", {}).get(name, "")
        table.add_row(label, *(format_ms(summary[p]) for p in ("p50", "p95", "p99", "max")), source)
    return table


def format_ms(value: float) -> str:
    """Milliseconds as a short human figure: ``0.042 ms``, ``12.5 ms``, ``3.20 s``."""
    if value < 1:
        return f"{value:.3f} ms"
    if value < 1000:
        return f"{value:.1f} ms"
    return f"{value / 1000:.2f} s"


def _float(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


__all__ = ["status_report", "render_status", "format_ms"]
