"""Reads (and the one lock-free append) that any Redis layout of ours serves the same way.

The registration sets, counters, streams, queue and dead-letter list have the same
keys and types in the lock-free and the lock-based layouts; only worker states
differ. The lock-based manager takes these from here; none of them needs a lock
(each is one command, or a pipeline of independent reads, as in the lock-free one).
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterable, Sequence

import redis

from .. import keys
from ..models import dumps
from .base import StreamTail


class RedisReadsMixin:
    """Needs ``self.redis`` (a decoded client) and ``self.events_maxlen``."""

    redis: redis.Redis
    events_maxlen: int

    def active_workers(self) -> set[str]:
        return set(self.redis.smembers(keys.ACTIVE_WORKERS))

    def known_workers(self) -> set[str]:
        return set(self.redis.smembers(keys.KNOWN_WORKERS))

    def get_counter(self, name: str) -> int:
        return int(self.redis.get(keys.counter_key(name)) or 0)

    def get_counters(self, names: Sequence[str] = keys.COUNTERS) -> dict[str, int]:
        values = self.redis.mget([keys.counter_key(name) for name in names])
        return {name: int(value or 0) for name, value in zip(names, values, strict=True)}

    def worker_counters(self, worker_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        ids = sorted(worker_ids)
        if not ids:
            return {}
        values = self.redis.mget([k for w in ids for k in (keys.worker_completed_key(w), keys.worker_errors_key(w))])
        return {
            worker_id: {"completed": int(values[2 * i] or 0), "errors": int(values[2 * i + 1] or 0)}
            for i, worker_id in enumerate(ids)
        }

    def record_metric(
        self, name: str, value: float, tags: dict[str, object] | None = None, *, pipeline: Any = None
    ) -> None:
        """An append needs no lock: XADD (queued in ``pipeline`` if given)."""
        fields: dict[str, object] = {"name": name, "value": value, "ts": time.time()}
        if tags:
            fields["tags"] = dumps(tags)
        target = pipeline if pipeline is not None else self.redis
        target.xadd(keys.METRICS, fields, maxlen=self.events_maxlen, approximate=True)

    def stream_tail(self, stream: str) -> StreamTail:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(stream)
        pipe.xrevrange(stream, count=1)
        length, last = pipe.execute()
        return StreamTail(length=int(length), last=last[0][1] if last else {})

    def read_stream(self, stream: str, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        return list(reversed(self.redis.xrevrange(stream, count=count)))

    def queue_depths(self, worker_ids: Iterable[str] | None = None) -> dict[str, Any]:
        ids = sorted(self.known_workers() if worker_ids is None else worker_ids)
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(keys.QUEUE)
        pipe.llen(keys.DEAD_LETTER)
        for worker_id in ids:
            pipe.llen(keys.worker_inflight_key(worker_id))
        pending, dead, *inflight = pipe.execute()
        by_worker = {worker_id: int(n) for worker_id, n in zip(ids, inflight, strict=True)}
        return {
            "pending": int(pending),
            "inflight": sum(by_worker.values()),
            "dead_letter": int(dead),
            "by_worker": by_worker,
        }

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        entries = []
        for raw in self.redis.lrange(keys.DEAD_LETTER, 0, max(0, limit - 1)):
            try:
                entries.append(json.loads(raw))
            except ValueError:
                entries.append({"task": raw, "category": "bad_payload", "message": "unreadable entry"})
        return entries
