"""``monitor``: follow the event, metrics, worker-event and error streams live.

One readable line per entry (``--json``: one JSON object per line), read with
``XREAD BLOCK`` so lines appear as the entries are appended (a sharded layout's
streams are merged over its shards). ``--since`` replays
what the streams retain first. Without ``--redis-url`` it attaches to whatever
orchestrator owns ``--db``, waits while none does, and follows the next one
(it never starts a server itself, so it never keeps a ``run`` from starting).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from typing import Any, Iterable, TextIO

from .. import keys
from ..connection import GONE
from ..database import Attachment, open_state
from ..events import (
    MONITOR_STREAMS,
    StreamFollower,
    parse_since,
    resolve_stream,
    server_time,
    views_of,
)
from ..log import configure as configure_logging
from ..models import StreamEntry
from .common import (
    EXIT_OK,
    Signals,
    add_common_options,
    positive_int,
    say,
    settings_from,
)

BLOCK_MS = 500  # the longest a stop request waits for the blocked XREAD to return
WAIT_POLL_S = 0.2  # how often to look for an owner while none serves the database

LABELS = {
    keys.EVENTS: "events",
    keys.METRICS: "metrics",
    keys.WORKER_EVENTS: "workers",
    keys.WORK_ERRORS: "errors",
    keys.WORK_COMPLETIONS: "completions",
}
_LABEL_WIDTH = max(len(label) for label in LABELS.values())


def add_parser(commands: Any) -> None:
    monitor = commands.add_parser("monitor", help="follow the event, metrics, worker and error streams live")
    add_common_options(monitor)
    monitor.add_argument(
        "--stream",
        dest="streams",
        action="append",
        metavar="NAME",
        help="follow only this stream (repeatable): events, metrics, workers, errors, completions, "
        "or a full name (default: all but completions)",
    )
    monitor.add_argument(
        "--worker",
        dest="workers",
        action="append",
        metavar="ID",
        help="only entries naming this worker; glob patterns such as '*:0' match too (repeatable)",
    )
    monitor.add_argument(
        "--since",
        default="$",
        metavar="WHEN",
        help="replay from WHEN first: 0 (all retained), 30s, 5m, 2h, or a stream id (default: $, new entries only)",
    )
    monitor.add_argument("--count", type=positive_int, metavar="N", help="exit after printing N entries")
    monitor.add_argument("--no-follow", action="store_true", help="print what --since replays, then exit")
    monitor.add_argument("--json", action="store_true", help="one JSON object per line: stream, id, time, fields")
    monitor.set_defaults(handler=cmd_monitor)


def cmd_monitor(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging(settings.log_level if not args.json else "WARNING", settings.log_json)
    streams = list(dict.fromkeys(resolve_stream(s) for s in args.streams)) if args.streams else list(MONITOR_STREAMS)
    parse_since(args.since, time.time())  # a bad value fails here, before any waiting
    printer = Printer(sys.stdout, as_json=args.json, workers=args.workers or (), limit=args.count)
    signals = Signals()
    signals.install()
    try:
        if args.no_follow:
            with open_state(settings, role="monitor") as state:
                views = views_of(state)
                follower = StreamFollower(views, streams, parse_since(args.since, server_time(views[0].client)))
                printer.emit(follower.replay(), stop=lambda: bool(signals.count))
        else:
            with Attachment(settings) as attachment:
                _follow(attachment, streams, args.since, printer, signals)
    except BrokenPipeError:
        # The reader went away (`monitor | head`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        sys.stdout = open("/dev/null", "w")  # noqa: SIM115 (kept open until exit on purpose)
    return EXIT_OK


def _follow(attachment: Attachment, streams: list[str], since: str, printer: "Printer", signals: Signals) -> None:
    """Attach, replay, follow; wait for an owner whenever none serves the database."""
    follower: StreamFollower | None = None
    start: str | None = None
    waiting = False
    started_at = time.time()

    def stop() -> bool:
        return bool(signals.count) or printer.done

    while not stop():
        state = attachment.get()
        if state is None:
            if not waiting:
                say(f"waiting for an orchestrator on {attachment.settings.db_path} (Ctrl-C to stop)")
                waiting = True
            time.sleep(WAIT_POLL_S)
            continue
        try:
            views = views_of(state)
            if follower is None:
                start = parse_since(since, server_time(views[0].client))
                if start is None and waiting:
                    # Nothing served the database when we started: show all it did since.
                    start = f"{int(started_at * 1000)}-0"
                follower = StreamFollower(views, streams, start, block_ms=BLOCK_MS)
                printer.emit(follower.replay(), stop=stop)
            else:
                follower.client = views[0].client  # a new owner: a new client, the same shards
            entries = follower.poll()
        except GONE as exc:
            # Also while an orchestrator shuts down: its lock file still names the
            # socket for a moment after the server is gone. Say it once.
            attachment.reset()
            if not waiting:
                say(f"lost the orchestrator ({exc}); waiting for the next one (Ctrl-C to stop)")
                waiting = True
            time.sleep(WAIT_POLL_S)
            continue
        if waiting:
            say(f"following {attachment.url}")
            waiting = False
        printer.emit(entries, stop=stop)


class Printer:
    """Writes entries that pass the worker filter, one line each, up to ``limit``."""

    def __init__(self, out: TextIO, *, as_json: bool, workers: Iterable[str], limit: int | None) -> None:
        self.out = out
        self.as_json = as_json
        self.workers = list(workers)
        self.limit = limit
        self.printed = 0

    @property
    def done(self) -> bool:
        return self.limit is not None and self.printed >= self.limit

    def wanted(self, entry: StreamEntry) -> bool:
        if not self.workers:
            return True
        worker = entry.worker
        return bool(worker) and any(fnmatch.fnmatchcase(worker, pattern) for pattern in self.workers)

    def emit(self, entries: Iterable[StreamEntry], stop: Any = lambda: False) -> None:
        wrote = False
        for entry in entries:
            if self.done or stop():
                break
            if not self.wanted(entry):
                continue
            self.out.write((json.dumps(entry.to_dict()) if self.as_json else format_entry(entry)) + "\n")
            self.printed += 1
            wrote = True
        if wrote:
            self.out.flush()


def format_entry(entry: StreamEntry) -> str:
    """``HH:MM:SS.mmm label worker what key=value ...``: one readable line."""
    fields = dict(entry.fields)
    stamp = time.strftime("%H:%M:%S", time.localtime(entry.time)) + f".{int(entry.time * 1000) % 1000:03d}"
    label = LABELS.get(entry.stream, entry.stream)
    worker = fields.pop("worker", "") or entry.worker or "-"
    if entry.stream == keys.EVENTS:
        fields.pop("event", None)
        version = fields.pop("version", "")
        if fields.get("current_task"):
            fields["task"] = fields.pop("current_task")[:12]
        fields.pop("current_task", None)
        parts = [fields.pop("status", "state"), *_pairs(fields), f"v={version}" if version else ""]
    elif entry.stream == keys.WORKER_EVENTS:
        parts = [fields.pop("event", "?"), *_pairs(fields)]
    elif entry.stream in (keys.WORK_ERRORS, keys.WORK_COMPLETIONS):
        parts = [f"#{fields.pop('n', '?')}", fields.pop("name", "") or "?", fields.pop("task_id", "")[:12]]
        if entry.stream == keys.WORK_ERRORS:
            parts.append(f"{fields.pop('category', '')}: {fields.pop('message', '')}")
        else:
            parts.append(f"wait {fields.pop('wait_ms', '?')} ms, run {fields.pop('run_ms', '?')} ms")
        parts.extend(_pairs(fields))
    elif entry.stream == keys.METRICS:
        parts = [f"{fields.pop('name', '?')}={fields.pop('value', '?')}"]
        fields.pop("ts", None)
        parts.extend(_pairs({**_decoded_tags(fields.pop("tags", "")), **fields}))
    else:
        parts = _pairs(fields)
    return " ".join([stamp, f"{label:<{_LABEL_WIDTH}}", worker, *(p for p in parts if p)])


def _pairs(fields: dict[str, Any]) -> list[str]:
    return [f"{key}={value}" for key, value in fields.items()]


def _decoded_tags(tags: str) -> dict[str, Any]:
    if not tags:
        return {}
    try:
        decoded = json.loads(tags)
    except ValueError:
        return {"tags": tags}
    if not isinstance(decoded, dict):
        return {"tags": tags}
    decoded.pop("worker", None)  # shown in the worker column
    return decoded
