"""Read the streams: replay and follow them, and derive throughput and latency.

Every stream entry is appended inside one of the state manager's atomic steps
(``state/scripts.py``); this module only reads, through a redis-py client with
``decode_responses=True`` (:func:`client_of` takes it from a state manager)::

    --since 10m ─▶ start id "1700000000000-0" ─XRANGE pages per stream─▶ heapq.merge ─▶ replay
                                                                              │ (positions)
    XREAD BLOCK 1000 STREAMS s1 s2 .. id1 id2 .. ◀───── last id per stream ◀──┘ ─▶ follow

Entry ids are ``<server milliseconds>-<sequence>``, so an entry's time and any
time window map to ids without a field of their own.

Throughput needs no scan: each ``work_completions`` / ``work_errors`` entry
carries ``n``, the running total its INCR returned in the same atomic step, so the
tasks settled between two entries are the difference of their ``n`` (exact even
after MAXLEN trimming).

Latency (queue wait, run time) is read from ``metrics:stream`` samples named
``queue_wait_ms`` / ``run_ms`` when workers record them there, else from the
``wait_ms`` / ``run_ms`` fields of ``work_completions``.
"""
from __future__ import annotations

import heapq
import math
import re
from typing import Any, Iterable, Iterator, Sequence

import redis

from . import keys
from .exceptions import ConfigurationError
from .models import StreamEntry

# The streams `monitor` follows unless told otherwise (work_completions has one
# entry per task: ask for it by name).
MONITOR_STREAMS = (keys.EVENTS, keys.METRICS, keys.WORKER_EVENTS, keys.WORK_ERRORS)

# Short names accepted wherever a stream is named on the command line.
STREAM_ALIASES = {
    "events": keys.EVENTS,
    "metrics": keys.METRICS,
    "workers": keys.WORKER_EVENTS,
    "worker_events": keys.WORKER_EVENTS,
    "errors": keys.WORK_ERRORS,
    "completions": keys.WORK_COMPLETIONS,
}

# Latency metric name in metrics:stream → the field carrying it in work_completions.
LATENCY_METRICS = {"queue_wait_ms": "wait_ms", "run_ms": "run_ms"}
PERCENTILES = (50, 95, 99)
LATENCY_SAMPLES = 10_000  # newest tasks the status percentiles are computed over
THROUGHPUT_WINDOWS_S = (10, 60)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_FULL_ID = re.compile(r"^\d+-\d+$")
_EMPTY = "0-0"


# -- names, ids and times ------------------------------------------------------------------
def client_of(state: Any) -> redis.Redis:
    """The redis-py client behind a state manager: streams are a Redis feature.

    Raises:
        ConfigurationError: the state manager keeps no Redis streams.
    """
    client = getattr(state, "redis", None)
    if not isinstance(client, redis.Redis):
        raise ConfigurationError(f"the {getattr(state, 'kind', '?')} state manager keeps no Redis streams to read")
    return client


def resolve_stream(name: str) -> str:
    """A stream's full name from a full name or an alias (``events``, ``errors``, ...).

    Raises:
        ConfigurationError: neither a stream of :data:`keys.STREAMS` nor an alias.
    """
    if name in keys.STREAMS:
        return name
    try:
        return STREAM_ALIASES[name]
    except KeyError:
        choices = ", ".join([*STREAM_ALIASES, *keys.STREAMS])
        raise ConfigurationError(f"stream must be one of {choices}; got {name!r}") from None


def id_order(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair (milliseconds, sequence)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def server_time(client: redis.Redis) -> float:
    """The server's clock in seconds (the clock stream ids are made from)."""
    seconds, micros = client.time()
    return seconds + micros / 1e6


def parse_since(text: str, now: float) -> str | None:
    """Turn a ``--since`` value into an XRANGE start, or None for "only new entries".

    Accepted: ``$`` (new entries only), ``0`` / ``all`` (everything retained), a
    duration back from ``now`` (``500ms``, ``30s``, ``5m``, ``2h``, ``1d``), a stream
    id ``MS-SEQ`` (entries after it, as XREAD reads) or a millisecond timestamp
    ``MS`` (entries from that time on).

    Raises:
        ConfigurationError: anything else.
    """
    text = text.strip()
    if text in ("$", "now"):
        return None
    if text in ("0", "0-0", "all", "-"):
        return "-"
    match = _DURATION.match(text)
    if match:
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
        return f"{max(0, int((now - seconds) * 1000))}-0"
    if _FULL_ID.match(text):
        return "(" + text
    if text.isdigit():
        return f"{int(text)}-0"
    message = f"since must be $, 0, a duration such as 30s, 5m or 2h, or a stream id MS-SEQ; got {text!r}"
    raise ConfigurationError(message)


def last_id(client: redis.Redis, stream: str) -> str:
    """The id of the newest entry, ``"0-0"`` for an empty or missing stream."""
    newest = client.xrevrange(stream, count=1)
    return newest[0][0] if newest else _EMPTY


# -- replaying and following ---------------------------------------------------------------
def read_range(
    client: redis.Redis, stream: str, start: str = "-", end: str = "+", page: int = 1000
) -> Iterator[StreamEntry]:
    """Entries of one stream from ``start`` to ``end`` (XRANGE syntax), oldest first, in pages."""
    while True:
        batch = client.xrange(stream, min=start, max=end, count=page)
        for entry_id, fields in batch:
            yield StreamEntry(stream, entry_id, fields)
        if len(batch) < page:
            return
        start = "(" + batch[-1][0]


def _merge_key(entry: StreamEntry) -> tuple[int, int, str]:
    return (*id_order(entry.id), entry.stream)


class StreamFollower:
    """Reads several streams in id order: first what they hold from ``since``, then
    new entries as they are appended (``XREAD BLOCK``).

    Positions (the last id read from each stream) live here, not in the client:
    after a lost connection, assign a new ``client`` and go on where it stopped.

    Args:
        client: a client created in this process.
        streams: full stream names.
        since: an XRANGE start from :func:`parse_since`; None reads only new entries.
        block_ms: how long one :meth:`poll` waits for something new.
        count: most entries one call reads from each stream.
    """

    def __init__(
        self,
        client: redis.Redis,
        streams: Sequence[str],
        since: str | None = None,
        *,
        block_ms: int = 1000,
        count: int = 1000,
    ) -> None:
        self.client = client
        self.streams = list(streams)
        self.since = since
        self.block_ms = block_ms
        self.count = count
        self.positions: dict[str, str] | None = None

    def replay(self) -> Iterator[StreamEntry]:
        """What the streams hold from ``since`` up to now, merged in id order.

        Ids order entries across streams to the millisecond only (sequence numbers
        are per stream). Marks where :meth:`poll` starts: entries appended during the replay are
        read by the first poll, none twice.
        """
        pipe = self.client.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xrevrange(stream, count=1)
        ends = {s: (newest[0][0] if newest else _EMPTY) for s, newest in zip(self.streams, pipe.execute(), strict=True)}
        if self.since is not None:
            ranges = [
                read_range(self.client, stream, self.since, end, self.count)
                for stream, end in ends.items()
                if end != _EMPTY
            ]
            yield from heapq.merge(*ranges, key=_merge_key)
        self.positions = ends

    def poll(self) -> list[StreamEntry]:
        """New entries of every stream since the last call (in id order); ``[]`` after
        ``block_ms`` without any. Raises redis.ConnectionError when the server is gone."""
        if self.positions is None:
            for _ in self.replay():
                pass
        reply = self.client.xread(self.positions, count=self.count, block=self.block_ms)
        items = reply.items() if isinstance(reply, dict) else reply or []
        entries = []
        for stream, stream_entries in items:
            for entry_id, fields in stream_entries:
                entries.append(StreamEntry(stream, entry_id, fields))
            if stream_entries:
                self.positions[stream] = stream_entries[-1][0]
        entries.sort(key=_merge_key)
        return entries


# -- throughput ------------------------------------------------------------------------------
def throughput(
    client: redis.Redis, windows_s: Sequence[float] = THROUGHPUT_WINDOWS_S, now: float | None = None
) -> dict[str, dict[str, float]]:
    """Tasks completed and failed per second over each recent window, in one round trip.

    Returns ``{"10s": {"completed_per_s": x, "errors_per_s": y}, ...}``: the
    difference of the running totals ``n`` between the first entry inside the
    window and the newest one, divided by the time from that first entry to now
    (at least 1 s, at most the window), so a run that began 3 s ago shows its
    rate rather than a third of it. A window reaching back before the oldest
    retained entry counts from that entry.
    """
    now = server_time(client) if now is None else now
    streams = (keys.WORK_COMPLETIONS, keys.WORK_ERRORS)
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xrevrange(stream, count=1)
        for window in windows_s:
            pipe.xrange(stream, min=f"{int((now - window) * 1000)}-0", count=1)
    replies = iter(pipe.execute())
    result: dict[str, dict[str, float]] = {_window_name(w): {} for w in windows_s}
    for field in ("completed_per_s", "errors_per_s"):  # in the order of `streams`
        newest = next(replies)
        for window in windows_s:
            first = next(replies)
            rate = 0.0
            if newest and first:
                settled = _running_total(newest[0][1]) - _running_total(first[0][1]) + 1
                span = min(window, max(1.0, now - id_order(first[0][0])[0] / 1000.0))
                rate = max(0, settled) / span
            result[_window_name(window)][field] = round(rate, 1)
    return result


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
    """Nearest-rank percentile of an ascending sequence (0 for an empty one)."""
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


def recent_latency(client: redis.Redis, samples: int = LATENCY_SAMPLES) -> dict[str, Any]:
    """Percentiles of queue wait and run time (ms) over the newest ``samples`` tasks.

    Each metric comes from ``metrics:stream`` when it holds samples of that name,
    else from ``work_completions``. Returns ``{"queue_wait_ms": summary, "run_ms":
    summary, "sources": {metric: stream}}`` (see :func:`summarize`).
    """
    by_metric: dict[str, list[float]] = {name: [] for name in LATENCY_METRICS}
    metrics = (StreamEntry(keys.METRICS, i, f) for i, f in client.xrevrange(keys.METRICS, count=2 * samples))
    for name, value in latency_samples(metrics):
        if len(by_metric[name]) < samples:
            by_metric[name].append(value)
    sources = {name: keys.METRICS for name, values in by_metric.items() if values}
    if len(sources) < len(by_metric):
        completions = (
            StreamEntry(keys.WORK_COMPLETIONS, i, f) for i, f in client.xrevrange(keys.WORK_COMPLETIONS, count=samples)
        )
        for name, value in latency_samples(completions):
            if name not in sources:
                by_metric[name].append(value)
        sources.update({name: keys.WORK_COMPLETIONS for name in by_metric if name not in sources})
    result: dict[str, Any] = {name: summarize(values) for name, values in by_metric.items()}
    result["sources"] = sources
    return result


__all__ = [
    "MONITOR_STREAMS",
    "STREAM_ALIASES",
    "LATENCY_METRICS",
    "StreamFollower",
    "client_of",
    "resolve_stream",
    "id_order",
    "server_time",
    "parse_since",
    "last_id",
    "read_range",
    "throughput",
    "latency_samples",
    "percentile",
    "summarize",
    "recent_latency",
]
