"""What ``run`` shows while it works: a live display on a terminal, plain lines otherwise.

All three displays take the same :class:`Sample` (the library's snapshot reader, its
three cheap reads: counters, active workers, queue depths) and go to stderr:

* :class:`LiveDisplay` (stderr is a terminal): a rich progress bar with
  settled / total, rate, errors, active workers, queue and ETA, redrawn in place.
* :class:`PlainDisplay` (a pipe or a file): one ``progress:`` line every
  ``--progress-interval`` seconds (in serve mode only when something changed).
* :class:`NoDisplay` (``--json``): nothing; stdout gets only the final JSON.
"""
from __future__ import annotations

import collections
import time
from typing import Any

import attrs
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from .. import keys
from ..orchestrator import ContinuousOrchestrator
from ..reading import read_snapshot
from .common import say

RATE_WINDOW_S = 5.0  # the rate shown is the average over this many recent seconds


@attrs.frozen(kw_only=True)
class Sample:
    """One reading of a run's progress; counts are this run's (since it started)."""

    settled: int  # completed + dead-lettered
    completed: int
    errors: int
    total: int | None  # tasks this run is waiting for; None when serving
    active_workers: int
    pending: int
    inflight: int
    rate: float  # settled per second over the last RATE_WINDOW_S
    elapsed: float

    @property
    def eta_s(self) -> float | None:
        """Seconds until the rest settles at the current rate (None if unknown)."""
        left = (self.total - self.settled) if self.total is not None else self.pending + self.inflight
        if left <= 0:
            return 0.0
        return left / self.rate if self.rate > 0 else None


class Sampler:
    """Reads :class:`Sample` s from a running orchestrator and keeps the rate window.

    Args:
        orch: the started orchestrator.
        before: its counters when the run began.
        total: tasks this run waits for (None in serve mode).
    """

    def __init__(self, orch: ContinuousOrchestrator, before: dict[str, int], total: int | None) -> None:
        self.orch = orch
        self.before = before
        self.total = total
        self.started = time.monotonic()
        self._history: collections.deque[tuple[float, int]] = collections.deque()

    def sample(self) -> Sample:
        # running: sampled inside `with orch`, so the state is there
        snapshot = read_snapshot(self.orch.state, workers="none", audit=False, figures=False)  # type: ignore[arg-type]
        counters, depths, active = snapshot.counters, snapshot.queues, len(snapshot.active_workers)
        completed = counters[keys.TOTAL_WORK_COMPLETED] - self.before.get(keys.TOTAL_WORK_COMPLETED, 0)
        dead = counters[keys.TOTAL_DEAD_LETTERED] - self.before.get(keys.TOTAL_DEAD_LETTERED, 0)
        errors = counters[keys.TOTAL_ERRORS] - self.before.get(keys.TOTAL_ERRORS, 0)
        now = time.monotonic()
        settled = completed + dead
        self._history.append((now, settled))
        while len(self._history) > 2 and now - self._history[1][0] >= RATE_WINDOW_S:
            self._history.popleft()
        then, settled_then = self._history[0] if len(self._history) > 1 else (self.started, 0)
        rate = (settled - settled_then) / (now - then) if now > then else 0.0
        return Sample(
            settled=settled,
            completed=completed,
            errors=errors,
            total=self.total,
            active_workers=active,
            pending=depths["pending"],
            inflight=depths["inflight"],
            rate=rate,
            elapsed=now - self.started,
        )


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``1h02m``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def plain_line(sample: Sample) -> str:
    """The line a non-terminal gets (``progress: 1200/20000 settled ...``)."""
    if sample.total is not None:
        share = f" ({100.0 * sample.settled / sample.total:.1f}%)" if sample.total else ""
        head = f"progress: {sample.settled}/{sample.total} settled{share}"
    else:
        head = f"serving: {sample.settled} settled"
    return (
        f"{head}, {sample.completed} completed, {sample.errors} errors, {sample.rate:,.0f}/s, "
        f"{sample.active_workers} workers active, queue {sample.pending} pending / {sample.inflight} in flight, "
        f"ETA {format_duration(sample.eta_s)}"
    )


class NoDisplay:
    """``--json``: show nothing."""

    def update(self, sample: Sample) -> None:
        return None

    def close(self) -> None:
        return None


class PlainDisplay:
    """One line every ``interval`` seconds (serve mode: only when something changed)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = time.monotonic() + interval
        self._last: tuple[int, int, int, int] | None = None

    def update(self, sample: Sample) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval
        key = (sample.settled, sample.errors, sample.pending, sample.active_workers)
        if sample.total is None and key == self._last:
            return
        self._last = key
        say(plain_line(sample))

    def close(self) -> None:
        return None


class LiveDisplay:
    """A rich progress bar on stderr, redrawn in place; log lines appear above it."""

    def __init__(self, console: Console, total: int | None) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=None),
            TaskProgressColumn(),
            TextColumn("{task.completed:,.0f}/{task.fields[total_text]}"),
            TextColumn("[cyan]{task.fields[rate]}"),
            TextColumn("[red]{task.fields[errors]}"),
            TextColumn("{task.fields[workers]}"),
            TextColumn("{task.fields[queue]}"),
            TextColumn("[magenta]{task.fields[eta]}"),
            console=console,
            refresh_per_second=8,
            transient=False,
            expand=True,
        )
        self.task = self.progress.add_task(
            "run" if total is not None else "serve",
            total=total,
            total_text=f"{total:,}" if total is not None else "-",
            rate="",
            errors="",
            workers="",
            queue="",
            eta="",
        )
        self.progress.start()

    def update(self, sample: Sample) -> None:
        fields: dict[str, Any] = {
            "completed": sample.settled,
            "rate": f"{sample.rate:,.0f}/s",
            "errors": f"{sample.errors:,} errors",
            "workers": f"{sample.active_workers} workers",
            "queue": f"queue {sample.pending:,}+{sample.inflight:,}",
            "eta": f"ETA {format_duration(sample.eta_s)}",
        }
        if sample.total is None:
            fields["total_text"] = "-"
        self.progress.update(self.task, **fields)

    def close(self) -> None:
        self.progress.refresh()
        self.progress.stop()


Display = NoDisplay | PlainDisplay | LiveDisplay


def make_display(quiet: bool, total: int | None, interval: float) -> Display:
    """The display for this run: none with ``--json``, live on a terminal, plain lines otherwise."""
    if quiet:
        return NoDisplay()
    console = Console(stderr=True)
    if console.is_terminal:
        return LiveDisplay(console, total)
    return PlainDisplay(interval)
