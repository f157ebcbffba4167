"""Prometheus metrics read from Redis: counters, gauges and latency histograms.

::

    GET /metrics ─▶ OrchestratorCollector.collect()          (one scrape at a time)
                      ├─ source() → the live owner's state manager, or None → orchestrator_mp_up 0
                      ├─ counters (MGET), active workers (SMEMBERS), queue depths (LLEN),
                      │  worker states and counters (pipelined HGETALL / GET)
                      └─ LatencyHistograms.update(): XRANGE what each stream (of each
                         shard) gained since the previous scrape, bucketed in this process

Counters map one to one onto the key schema's counters (``total_X`` →
``orchestrator_mp_X_total``), so a scrape reports exactly what ``status`` and
``audit()`` read. Histograms must only ever grow, so they are accumulated here
from the stream entries each scrape has not seen yet: queue wait and run time
come from ``metrics:stream`` samples named ``queue_wait_ms`` / ``run_ms`` once
workers record them there (from then on), else from the ``wait_ms`` / ``run_ms``
fields of ``work_completions``. Entries MAXLEN trimmed away before a scrape read
them are counted in ``orchestrator_mp_latency_samples_skipped_total`` (exact for
``work_completions``, whose entries carry each shard's running total ``n``): with
that source, ``_count + skipped == orchestrator_mp_work_completed_total``.

Nothing here writes to Redis.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from . import keys
from .connection import GONE
from .events import ShardView, Source, as_views, view_range, views_of
from .figures import LATENCY_METRICS, latency_samples
from .models import StreamEntry
from .reading import read_snapshot

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .state import StateManager

PREFIX = "orchestrator_mp"
# Upper bounds, in seconds, of the latency histogram buckets (+Inf is added).
BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
MAX_ENTRIES_PER_SCRAPE = 50_000  # per stream, to keep a scrape within seconds; the rest waits for the next
HISTOGRAMS = {
    "queue_wait_ms": ("queue_wait_seconds", "Time tasks waited in the queue before a worker started them."),
    "run_ms": ("run_seconds", "Time tasks ran in a worker."),
}
COUNTER_HELP = {
    keys.TOTAL_WORK_CREATED: "Tasks submitted.",
    keys.TOTAL_WORK_COMPLETED: "Tasks completed, each counted once.",
    keys.TOTAL_ERRORS: "Task failures recorded (task errors, unknown tasks, bad payloads, poison).",
    keys.TOTAL_DEAD_LETTERED: "Tasks parked in the dead-letter list.",
    keys.TOTAL_REQUEUED: "Tasks put back in the queue after their worker died.",
    keys.TOTAL_DUPLICATES: "Extra runs of tasks already counted (after a recovery), not counted again.",
    keys.TOTAL_FENCED: "Results refused because the worker's partition had been taken over.",
}


def counter_metric_name(counter: str) -> str:
    """``total_work_completed`` → ``orchestrator_mp_work_completed`` (the exposition adds ``_total``)."""
    return f"{PREFIX}_{counter.removeprefix('total_')}"


class LatencyHistograms:
    """Cumulative histograms of queue wait and run time, fed from the streams.

    Each :meth:`update` reads only the entries appended since the previous one.

    Args:
        buckets: upper bounds in seconds, ascending.
        max_entries: most entries read from each stream per update.
    """

    def __init__(self, buckets: Sequence[float] = BUCKETS_S, max_entries: int = MAX_ENTRIES_PER_SCRAPE) -> None:
        self.buckets = tuple(sorted(buckets))
        self.max_entries = max_entries
        self.counts = {name: [0] * (len(self.buckets) + 1) for name in LATENCY_METRICS}
        self.sums = dict.fromkeys(LATENCY_METRICS, 0.0)
        self.positions: dict[tuple[int, str], str] = {}  # (shard view index, plain stream) → last id read
        self.from_metrics: set[str] = set()  # names recorded in metrics:stream (that source wins)
        self.last_n: dict[int, int] = {}  # shard view index → the running total n last read
        self.skipped = 0

    def update(self, source: Source) -> None:
        """Read what ``metrics:stream`` and ``work_completions`` of every shard gained
        since the last call (``source``: a client, or :func:`events.views_of` a state)."""
        views = as_views(source)
        for index, view in enumerate(views):
            for entry in self._new_entries(index, view, keys.METRICS):
                name = entry.fields.get("name")
                if name in LATENCY_METRICS:
                    self.from_metrics.add(name)
                for metric, value in latency_samples((entry,)):
                    self._observe(metric, value)
        if self.from_metrics >= set(LATENCY_METRICS):
            return
        for index, view in enumerate(views):
            for entry in self._new_entries(index, view, keys.WORK_COMPLETIONS):
                self._count_gap(index, entry.fields.get("n"))
                for metric, value in latency_samples((entry,)):
                    if metric not in self.from_metrics:
                        self._observe(metric, value)

    def _new_entries(self, index: int, view: ShardView, stream: str) -> Iterator[StreamEntry]:
        position = self.positions.get((index, stream))
        start = "-" if position is None else "(" + position
        for read, entry in enumerate(view_range(view, stream, start, "+", page=min(1000, self.max_entries))):
            if read >= self.max_entries:
                return
            self.positions[(index, stream)] = entry.id
            yield entry

    def _count_gap(self, index: int, running_total: str | None) -> None:
        """Count completions trimmed away unread: a shard's ``n`` grows by one per entry."""
        try:
            n = int(running_total or "")
        except ValueError:
            return
        last = self.last_n.get(index)
        expected = 1 if last is None else last + 1
        if n > expected:
            self.skipped += n - expected
        self.last_n[index] = n

    def _observe(self, metric: str, milliseconds: float) -> None:
        seconds = milliseconds / 1000.0
        counts = self.counts[metric]
        for index, bound in enumerate(self.buckets):
            if seconds <= bound:
                counts[index] += 1
                break
        else:
            counts[-1] += 1
        self.sums[metric] += seconds

    def families(self) -> list[Metric]:
        """One HistogramMetricFamily per metric, plus the skipped-samples counter."""
        families: list[Metric] = []
        for metric, (name, documentation) in HISTOGRAMS.items():
            cumulative, running = [], 0
            for bound, count in zip((*map(_le, self.buckets), "+Inf"), self.counts[metric], strict=True):
                running += count
                cumulative.append((bound, running))
            families.append(
                HistogramMetricFamily(f"{PREFIX}_{name}", documentation, buckets=cumulative, sum_value=self.sums[metric])
            )
        families.append(
            CounterMetricFamily(
                f"{PREFIX}_latency_samples_skipped",
                "Completions trimmed from work_completions (MAXLEN) before the exporter read their latency.",
                value=self.skipped,
            )
        )
        return families


def _le(bound: float) -> str:
    return f"{bound:g}"


class OrchestratorCollector:
    """A prometheus_client collector reading one orchestrator's state on every scrape.

    Args:
        source: returns the state manager to read (None while nothing serves it).
        on_error: called after a lost connection (e.g. :meth:`Attachment.reset`).
        histograms: where latency is accumulated (a fresh one by default).
    """

    def __init__(
        self,
        source: Callable[[], "StateManager | None"],
        on_error: Callable[[], None] = lambda: None,
        histograms: LatencyHistograms | None = None,
    ) -> None:
        self.source = source
        self.on_error = on_error
        self.histograms = histograms or LatencyHistograms()
        self._lock = threading.Lock()  # the HTTP server answers scrapes on threads

    def describe(self) -> list[Metric]:
        return []  # names vary with the workers; skip registration-time collection

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families: list[Metric] = []
            up = 0
            state = self.source()
            if state is not None:
                try:
                    families = self._read(state)
                    up = 1
                except GONE:
                    self.on_error()
            yield GaugeMetricFamily(f"{PREFIX}_up", "1 when the orchestrator's Redis answered this scrape.", value=up)
            yield from families
            yield from self.histograms.families()

    def _read(self, state: "StateManager") -> list[Metric]:
        # Histograms first: completions appended while this scrape reads are then
        # counted by the counters (read after) but not yet observed, never the reverse.
        self.histograms.update(views_of(state))
        # The library's snapshot reader, its plain reads (a scrape needs no audit): the
        # depths count the in-flight of every known partition, not only the live ones.
        snapshot = read_snapshot(state, workers="active", audit=False, figures=False)
        counters, depths, active = snapshot.counters, snapshot.queues, snapshot.active_workers
        states = per_worker = snapshot.workers

        families: list[Metric] = []
        for counter, value in counters.items():
            families.append(CounterMetricFamily(counter_metric_name(counter), COUNTER_HELP.get(counter, counter), value))
        gauges = (
            ("queue_pending", "Tasks waiting in the queue.", depths["pending"]),
            ("queue_inflight", "Tasks claimed by a worker and not yet settled.", depths["inflight"]),
            ("queue_dead_letter", "Entries in the dead-letter list.", depths["dead_letter"]),
            ("active_workers", "Registered, live workers.", len(active)),
        )
        for name, documentation, value in gauges:
            families.append(GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value))
        by_status = GaugeMetricFamily(f"{PREFIX}_workers", "Live workers by status.", labels=["status"])
        statuses = [states.get(w, {}).get("status", "unknown") for w in active]
        for status in sorted({"busy", "idle", *statuses}):
            by_status.add_metric([status], statuses.count(status))
        families.append(by_status)

        completed = CounterMetricFamily(f"{PREFIX}_worker_completed", "Tasks completed by a live worker.", labels=["worker"])
        errors = CounterMetricFamily(f"{PREFIX}_worker_errors", "Task failures recorded by a live worker.", labels=["worker"])
        inflight = GaugeMetricFamily(f"{PREFIX}_worker_inflight", "Tasks a live worker holds.", labels=["worker"])
        activity = GaugeMetricFamily(
            f"{PREFIX}_worker_last_activity_timestamp_seconds", "When a live worker last changed state.", labels=["worker"]
        )
        for worker_id in active:
            completed.add_metric([worker_id], per_worker.get(worker_id, {}).get("completed", 0))
            errors.add_metric([worker_id], per_worker.get(worker_id, {}).get("errors", 0))
            inflight.add_metric([worker_id], depths["by_worker"].get(worker_id, 0))
            try:
                activity.add_metric([worker_id], float(states.get(worker_id, {}).get("last_activity", 0)))
            except ValueError:
                pass
        families.extend((completed, errors, inflight, activity))
        return families


def serve(collector: OrchestratorCollector, port: int, host: str = "127.0.0.1") -> tuple["WSGIServer", threading.Thread]:
    """Serve ``collector`` in Prometheus text format on ``http://host:port/metrics``.

    Returns prometheus_client's server and its thread; stop with ``server.shutdown()``.
    Port 0 picks a free port (``server.server_port``).

    Raises:
        OSError: the address is in use or cannot be bound.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return start_http_server(port, addr=host, registry=registry)


__all__ = ["OrchestratorCollector", "LatencyHistograms", "serve", "counter_metric_name", "BUCKETS_S"]
