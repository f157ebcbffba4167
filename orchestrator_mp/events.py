"""Read the streams: sources, names and ids, replay and follow.

Every stream entry is appended inside one of the state manager's atomic steps
(``state/scripts.py``); this module only reads, through redis-py clients with
``decode_responses=True``. A sharded state keeps a copy of every stream per shard
(``{om1.2}:events:stream``): readers take a *source*, one client (the plain
names) or the :class:`ShardView` list of :func:`views_of`, and always speak of
streams by their plain names::

    --since 10m ─▶ start id "1700000000000-0" ─XRANGE pages per stream and shard─▶ heapq.merge ─▶ replay
                                                                                       │ (positions)
    XREAD BLOCK 1000 STREAMS s1 s2 .. id1 id2 .. ◀── last id per (shard, stream) ◀─────┘ ─▶ follow

A cluster command may touch one slot only, so each XREAD reads one shard's streams
and a blocking one can wait on one shard at a time (several shards: each is read
without blocking, then one in turn blocks for at most 50 ms).

Entry ids are ``<server milliseconds>-<sequence>``, so an entry's time and any
time window map to ids without a field of their own.

The figures computed from these streams (throughput, latency percentiles) live in
:mod:`.figures`.
"""
from __future__ import annotations

import heapq
import itertools
import re
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Iterable,
    Iterator,
    Sequence,
    Union,
    cast,
)

import attrs
import redis
import redis.cluster

from . import keys
from .exceptions import ConfigurationError
from .models import StreamEntry
from .state.merge import id_order

if TYPE_CHECKING:
    from typing_extensions import TypeIs

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

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_FULL_ID = re.compile(r"^\d+-\d+$")
_EMPTY = "0-0"
SHARD_BLOCK_MS = 50  # the longest one blocking read waits on one shard while others may get entries


# -- sources: which clients and key spaces hold the streams ---------------------------------
Client = Union[redis.Redis, redis.cluster.RedisCluster]
# A stream's entries as a decoded client (decode_responses=True) returns them; redis-py
# types them bytes | str, so reads cast to this.
Entries = list[tuple[str, dict[str, str]]]


@attrs.frozen
class ShardView:
    """One shard's copy of the streams: a client and the key space of their names.

    ``ShardView(client)`` is the plain layout (the names of :mod:`keys` unchanged).
    """

    client: Client
    space: keys.KeySpace = keys.PLAIN

    def key(self, stream: str) -> str:
        """The key of a plain stream name in this shard."""
        return self.space.key(stream)


# What the readers accept: one client (the plain layout) or a view per shard.
Source = Union[Client, Sequence[ShardView]]


def _is_client(value: object) -> TypeIs[Client]:
    return isinstance(value, (redis.Redis, redis.cluster.RedisCluster))


def client_of(state: Any) -> Client:
    """The redis-py client behind a state manager: streams are a Redis feature.

    It reads the plain stream names only; a sharded state's streams are read
    through :func:`views_of`.

    Raises:
        ConfigurationError: the state manager keeps no Redis streams.
    """
    client: Client = state.stream_views()[0][0]
    return client


def views_of(state: Any) -> list[ShardView]:
    """One :class:`ShardView` per shard of a state manager (one for a plain layout).

    Raises:
        ConfigurationError: the state manager keeps no Redis streams (the file state).
    """
    return [ShardView(client, space) for client, space in state.stream_views()]


def as_views(source: Source | ShardView) -> list[ShardView]:
    """The views of a source: a client is the plain layout, a view stands alone.

    Raises:
        ConfigurationError: neither a client nor any view.
    """
    if _is_client(source):
        return [ShardView(source)]
    if isinstance(source, ShardView):
        return [source]
    views = list(source) if isinstance(source, (list, tuple)) else []
    if not views or not all(isinstance(view, ShardView) for view in views):
        raise ConfigurationError(f"streams are read from a redis client or ShardViews; got {source!r}")
    return views


def pipelined(views: Sequence[ShardView], queue: Callable[[Any, ShardView], object]) -> list[list[Any]]:
    """Replies of the commands ``queue(pipe, view)`` adds for each view, one list per
    view, through one non-transactional pipeline per client (one round trip when the
    views share a client; a cluster pipeline may span slots)."""
    groups: dict[int, list[int]] = {}
    for index, view in enumerate(views):
        groups.setdefault(id(view.client), []).append(index)
    replies: list[list[Any]] = [[] for _ in views]
    for indexes in groups.values():
        pipe = views[indexes[0]].client.pipeline(transaction=False)
        sizes = []
        for index in indexes:
            before = len(pipe)
            queue(pipe, views[index])
            sizes.append(len(pipe) - before)
        flat = iter(pipe.execute())
        for index, size in zip(indexes, sizes, strict=True):
            replies[index] = [next(flat) for _ in range(size)]
    return replies


# -- names, ids and times ------------------------------------------------------------------
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


def server_time(client: Client) -> float:
    """The server's clock in seconds (the clock stream ids are made from); on a
    cluster, the clock of the node redis-py sends TIME to (its default node)."""
    reply = client.time()
    if isinstance(reply, dict):  # a reply per node: any of them
        reply = next(iter(reply.values()))
    seconds, micros = reply
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


def last_id(client: Client, stream: str) -> str:
    """The id of the newest entry, ``"0-0"`` for an empty or missing stream."""
    newest = cast(Entries, client.xrevrange(stream, count=1))
    return newest[0][0] if newest else _EMPTY


# -- replaying and following ---------------------------------------------------------------
def read_range(
    client: Client, stream: str, start: str = "-", end: str = "+", page: int = 1000, *, name: str | None = None
) -> Iterator[StreamEntry]:
    """Entries of one stream from ``start`` to ``end`` (XRANGE syntax), oldest first, in pages.

    ``name``: what the entries call their stream (a shard's key read under its plain name).
    """
    name = stream if name is None else name
    while True:
        batch = cast(Entries, client.xrange(stream, min=start, max=end, count=page))
        for entry_id, fields in batch:
            yield StreamEntry(name, entry_id, fields)
        if len(batch) < page:
            return
        start = "(" + batch[-1][0]


def view_range(view: ShardView, stream: str, start: str = "-", end: str = "+", page: int = 1000) -> Iterator[StreamEntry]:
    """:func:`read_range` of one shard's copy of a stream, entries named by the plain name."""
    return read_range(view.client, view.key(stream), start, end, page, name=stream)


def _merge_key(entry: StreamEntry) -> tuple[int, int, str]:
    return (*id_order(entry.id), entry.stream)


class StreamFollower:
    """Reads several streams in id order: first what they hold from ``since``, then
    new entries as they are appended (``XREAD BLOCK``).

    Positions (the last id read from each stream of each shard) live here, not in
    the client: after a lost connection, assign a new ``client`` (every view gets
    it) and go on where it stopped.

    Args:
        source: a client created in this process, or one view per shard (:func:`views_of`).
        streams: plain stream names.
        since: an XRANGE start from :func:`parse_since`; None reads only new entries.
        block_ms: how long one :meth:`poll` waits for something new (0: until something comes).
        count: most entries one call reads from each stream.
    """

    def __init__(
        self,
        source: Source,
        streams: Sequence[str],
        since: str | None = None,
        *,
        block_ms: int = 1000,
        count: int = 1000,
    ) -> None:
        self.views = as_views(source)
        self.streams = list(streams)
        self.since = since
        self.block_ms = block_ms
        self.count = count
        self.positions: dict[tuple[int, str], str] | None = None  # (view index, plain stream) → last id
        self._turn = 0  # the view the next blocking read waits on

    @property
    def client(self) -> Client:
        """The client of the (first) view."""
        return self.views[0].client

    @client.setter
    def client(self, client: Client) -> None:
        self.views = [attrs.evolve(view, client=client) for view in self.views]

    def replay(self) -> Iterator[StreamEntry]:
        """What the streams hold from ``since`` up to now, merged in id order.

        Ids order entries across streams and shards to the millisecond only (sequence
        numbers are per stream). Marks where :meth:`poll` starts: entries appended
        during the replay are read by the first poll, none twice.
        """
        tails = pipelined(self.views, lambda pipe, view: [pipe.xrevrange(view.key(s), count=1) for s in self.streams])
        ends = {
            (index, stream): (newest[0][0] if newest else _EMPTY)
            for index, replies in enumerate(tails)
            for stream, newest in zip(self.streams, replies, strict=True)
        }
        if self.since is not None:
            ranges = [
                view_range(self.views[index], stream, self.since, end, self.count)
                for (index, stream), end in ends.items()
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
        if len(self.views) == 1:
            return self._read(0, self.block_ms)
        deadline = None if self.block_ms <= 0 else time.monotonic() + self.block_ms / 1000.0
        while True:
            entries = [entry for index in range(len(self.views)) for entry in self._read(index, None)]
            if not entries:
                wait_ms = SHARD_BLOCK_MS if deadline is None else int((deadline - time.monotonic()) * 1000)
                if wait_ms <= 0:
                    return []
                turn, self._turn = self._turn, (self._turn + 1) % len(self.views)
                entries = self._read(turn, min(wait_ms, SHARD_BLOCK_MS))
            if entries:
                return sorted(entries, key=_merge_key)

    def _read(self, index: int, block_ms: int | None) -> list[StreamEntry]:
        """One XREAD of one view's streams (one slot), past their positions."""
        assert self.positions is not None
        view = self.views[index]
        reply = view.client.xread(
            {view.key(stream): self.positions[(index, stream)] for stream in self.streams},
            count=self.count,
            block=block_ms,
        )
        # RESP3 answers a dict by stream, RESP2 a list of (stream, entries) pairs
        items = cast("Iterable[tuple[str, Entries]]", reply.items() if isinstance(reply, dict) else reply or [])
        entries = []
        for key, stream_entries in items:
            stream = view.space.plain(key)
            for entry_id, fields in stream_entries:
                entries.append(StreamEntry(stream, entry_id, fields))
            if stream_entries:
                self.positions[(index, stream)] = stream_entries[-1][0]
        entries.sort(key=_merge_key)
        return entries


def newest_entries(source: Source, stream: str, count: int) -> list[StreamEntry]:
    """The newest ``count`` entries of a stream over every shard, newest first."""
    views = as_views(source)
    replies = pipelined(views, lambda pipe, view: pipe.xrevrange(view.key(stream), count=count))
    per_view = [[StreamEntry(stream, i, f) for i, f in entries] for (entries,) in replies]
    merged = heapq.merge(*per_view, key=lambda entry: id_order(entry.id), reverse=True)
    return list(itertools.islice(merged, count))


__all__ = [
    "MONITOR_STREAMS",
    "STREAM_ALIASES",
    "ShardView",
    "StreamFollower",
    "client_of",
    "views_of",
    "as_views",
    "pipelined",
    "Source",
    "Client",
    "resolve_stream",
    "id_order",
    "server_time",
    "parse_since",
    "last_id",
    "read_range",
    "view_range",
    "newest_entries",
]
