"""Figures computed from the streams: throughput and latency percentiles.

What ``status``, the ``run`` summary and the README's library example show, read
through :mod:`.events` (one client or a view per shard) in as few round trips as
the figures allow.

Throughput needs no scan: each ``work_completions`` / ``work_errors`` entry
carries ``n``, the running total (per shard) its INCR returned in the same atomic
step, so the tasks settled between two entries of a shard are the difference of
their ``n`` (exact even after MAXLEN trimming); shards add up.

Latency (queue wait, run time) is read from ``metrics:stream`` samples named
``queue_wait_ms`` / ``run_ms`` when workers record them there, else from the
``wait_ms`` / ``run_ms`` fields of ``work_completions``. :func:`latency_samples`
also feeds the Prometheus histograms (:mod:`.metrics`).

Percentiles here are nearest-rank over the newest samples (:func:`percentile`, q in
0-100); ``bench.percentile`` is a different one (q in 0-1, index ``int(q * n)``) for
lock waits.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Sequence

from . import keys
from .events import (
    ShardView,
    Source,
    as_views,
    id_order,
    newest_entries,
    pipelined,
    server_time,
)
from .models import StreamEntry

# Latency metric name in metrics:stream → the field carrying it in work_completions.
LATENCY_METRICS = {"queue_wait_ms": "wait_ms", "run_ms": "run_ms"}
PERCENTILES = (50, 95, 99)
LATENCY_SAMPLES = 10_000  # newest tasks the status percentiles are computed over
THROUGHPUT_WINDOWS_S = (10, 60)


# -- throughput ------------------------------------------------------------------------------
def throughput(
    source: Source, windows_s: Sequence[float] = THROUGHPUT_WINDOWS_S, now: float | None = None
) -> dict[str, dict[str, float]]:
    """Tasks completed and failed per second over each recent window, in one round trip.

    Returns ``{"10s": {"completed_per_s": x, "errors_per_s": y}, ...}``: the
    difference of the running totals ``n`` between the first entry inside the
    window and the newest one (per shard, summed over shards), divided by the time
    from the earliest such first entry to now (at least 1 s, at most the window),
    so a run that began 3 s ago shows its rate rather than a third of it. A window
    reaching back before the oldest retained entry counts from that entry.
    """
    views = as_views(source)
    now = server_time(views[0].client) if now is None else now
    streams = {"completed_per_s": keys.WORK_COMPLETIONS, "errors_per_s": keys.WORK_ERRORS}

    def queue(pipe: Any, view: ShardView) -> None:
        for stream in streams.values():
            pipe.xrevrange(view.key(stream), count=1)
            for window in windows_s:
                pipe.xrange(view.key(stream), min=f"{int((now - window) * 1000)}-0", count=1)

    per_view = [iter(replies) for replies in pipelined(views, queue)]
    result: dict[str, dict[str, float]] = {_window_name(w): {} for w in windows_s}
    for field in streams:  # in the order queued
        newest = [next(replies) for replies in per_view]
        for window in windows_s:
            firsts = [next(replies) for replies in per_view]
            result[_window_name(window)][field] = _rate(newest, firsts, window, now)
    return result


def _rate(newest: Sequence[list[Any]], firsts: Sequence[list[Any]], window: float, now: float) -> float:
    """Tasks per second from each shard's newest entry and first entry in the window."""
    settled = 0
    start: float | None = None
    for last, first in zip(newest, firsts, strict=True):
        if last and first:
            settled += max(0, _running_total(last[0][1]) - _running_total(first[0][1]) + 1)
            began = id_order(first[0][0])[0] / 1000.0
            start = began if start is None else min(start, began)
    if start is None:
        return 0.0
    span = min(window, max(1.0, now - start))
    return round(settled / span, 1)


def _window_name(seconds: float) -> str:
    return f"{seconds:g}s"


def _running_total(fields: dict[str, str]) -> int:
    try:
        return int(fields.get("n", 0))
    except ValueError:
        return 0


# -- latency ---------------------------------------------------------------------------------
def latency_samples(entries: Iterable[StreamEntry]) -> Iterator[tuple[str, float]]:
    """``(metric, milliseconds)`` pairs carried by ``metrics:stream`` samples named in
    :data:`LATENCY_METRICS` and by ``work_completions`` entries; others are skipped."""
    for entry in entries:
        fields = entry.fields
        if entry.stream == keys.METRICS:
            name = fields.get("name")
            if name in LATENCY_METRICS:
                value = _number(fields.get("value"))
                if value is not None:
                    yield name, value
        elif entry.stream == keys.WORK_COMPLETIONS:
            for name, field in LATENCY_METRICS.items():
                value = _number(fields.get(field))
                if value is not None:
                    yield name, value


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0-100) of an ascending sequence, 0 for an empty
    one: the one definition every figure of the project uses (status, metrics, bench)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(values: Iterable[float], percentiles: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """``{"count", "mean", "p50", "p95", "p99", "max"}`` of some samples (zeros if none)."""
    ordered = sorted(values)
    summary: dict[str, float] = {"count": len(ordered)}
    summary["mean"] = round(sum(ordered) / len(ordered), 3) if ordered else 0.0
    for q in percentiles:
        summary[f"p{q:g}"] = round(percentile(ordered, q), 3)
    summary["max"] = round(ordered[-1], 3) if ordered else 0.0
    return summary


def recent_latency(source: Source, samples: int = LATENCY_SAMPLES) -> dict[str, Any]:
    """Percentiles of queue wait and run time (ms) over the newest ``samples`` tasks
    (of every shard together).

    Each metric comes from ``metrics:stream`` when it holds samples of that name,
    else from ``work_completions``. Returns ``{"queue_wait_ms": summary, "run_ms":
    summary, "sources": {metric: stream}}`` (see :func:`summarize`).
    """
    views = as_views(source)
    by_metric: dict[str, list[float]] = {name: [] for name in LATENCY_METRICS}
    for name, value in latency_samples(newest_entries(views, keys.METRICS, 2 * samples)):
        if len(by_metric[name]) < samples:
            by_metric[name].append(value)
    sources = {name: keys.METRICS for name, values in by_metric.items() if values}
    if len(sources) < len(by_metric):
        for name, value in latency_samples(newest_entries(views, keys.WORK_COMPLETIONS, samples)):
            if name not in sources and len(by_metric[name]) < samples:
                by_metric[name].append(value)
        sources.update({name: keys.WORK_COMPLETIONS for name in by_metric if name not in sources})
    result: dict[str, Any] = {name: summarize(values) for name, values in by_metric.items()}
    result["sources"] = sources
    return result


__all__ = [
    "LATENCY_METRICS",
    "PERCENTILES",
    "LATENCY_SAMPLES",
    "THROUGHPUT_WINDOWS_S",
    "throughput",
    "latency_samples",
    "percentile",
    "summarize",
    "recent_latency",
]
