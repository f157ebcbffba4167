"""The lock-free state's reads over its shards, and the two wrappers of its calls.

Reads fan out to every shard and merge (:mod:`.merge`); on one shard each call goes
straight to it (:func:`direct`). A patient manager waits out a failover
(:func:`riding_over_failovers`). :class:`~.lockfree.RedisLockFreeStateManager` is the
one user of this module.
"""
from __future__ import annotations

import functools
import inspect
import threading
import time
from typing import Any, Callable, Iterable, Sequence, TypeVar, cast

from .. import keys
from ..connection import translate_connection_errors
from ..exceptions import BackendUnavailable
from .base import AuditSnapshot, StateManager, StreamTail, audit_report
from .merge import id_order, merged_tail, summed_depths
from .shard import Shard
from .shards import shard_of

_M = TypeVar("_M", bound=Callable[..., Any])

ACTIVITY_FIELDS = ("status", "current_task", "batch", "last_activity")

# How long patient callers (the parent, readers) wait out an unreachable master: a
# cluster promotes a replica after cluster-node-timeout (15 s by default).
PATIENCE_S = 30.0


# How often calls that cannot block on every shard at once poll them (follow, and
# wait_result for a keyed task, whose result may land in any shard).
POLL_S = 0.05


_patience = threading.local()  # set while a call of this thread waits out an outage


def riding_over_failovers(cls: type) -> type:
    """Class decorator: a patient manager retries a public call that found a shard's
    master unreachable, with backoff, for up to ``PATIENCE_S``: long enough for a
    cluster to promote a replica (redis-py's cluster client retries at once, so it
    gives up within milliseconds). Fail-fast managers (workers) raise at once."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(_patience, "active", False):
                return method(self, *args, **kwargs)  # an outer call is already waiting it out
            deadline, delay = time.monotonic() + self.patience_s, 0.05
            _patience.active = True
            try:
                while True:
                    try:
                        return method(self, *args, **kwargs)
                    except BackendUnavailable:
                        if time.monotonic() + delay > deadline:
                            raise
                        time.sleep(delay)
                        delay = min(1.0, delay * 2)
            finally:
                _patience.active = False

        return call

    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member) and name not in ("close", "ring"):
            setattr(cls, name, wrap(member))
    return cls


def direct(method: _M) -> _M:
    """On one shard the call goes straight to it: the single-server fast path, with the
    plain layout's behaviour (a blocking claim, no doorbell, no per-shard epochs)."""
    name = method.__name__

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        one = self._one
        if one is not None:
            return getattr(one, name)(*args, **kwargs)
        return method(self, *args, **kwargs)

    return cast(_M, call)  # functools.wraps keeps the signature


@riding_over_failovers
@translate_connection_errors
class FanOutReads(StateManager):
    """Reads over ``self.shards`` (every shard holds its part; a worker has a copy in
    each), merged so callers see one state."""

    shards: list[Shard]
    _one: Shard | None
    patience_s: float
    shard_count: int

    @direct
    def expired_workers(self) -> list[str]:
        return sorted({w for shard in self.shards for w in shard.expired_workers()})

    @direct
    def active_workers(self) -> set[str]:
        return set().union(*(shard.active_workers() for shard in self.shards))

    @direct
    def known_workers(self) -> set[str]:
        return set().union(*(shard.known_workers() for shard in self.shards))

    @direct
    def get_worker_state(self, worker_id: str) -> dict[str, str]:
        return self.batch_get_worker_states([worker_id])[worker_id]

    @direct
    def batch_get_worker_states(self, worker_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """The home copy (versioned fields); while a batch claimed from another shard
        runs, that shard's copy says so (claims and settles write their shard's copy)."""
        ids = list(worker_ids)
        copies = [shard.batch_get_worker_states(ids) for shard in self.shards]
        states = {}
        for worker_id in ids:
            home = dict(copies[shard_of(worker_id, self.shard_count)][worker_id])
            busy = [part[worker_id] for part in copies if part[worker_id].get("status") == "busy"]
            if busy and home.get("status") != "busy":
                home.update({f: busy[0][f] for f in ACTIVITY_FIELDS if f in busy[0]})
            states[worker_id] = home
        return states

    @direct
    def get_counter(self, name: str) -> int:
        return sum(shard.get_counter(name) for shard in self.shards)

    @direct
    def get_counters(self, names: Sequence[str] = keys.COUNTERS) -> dict[str, int]:
        totals = dict.fromkeys(names, 0)
        for shard in self.shards:
            for name, value in shard.get_counters(names).items():
                totals[name] += value
        return totals

    @direct
    def worker_counters(self, worker_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        ids = sorted(worker_ids)
        totals = {w: {"completed": 0, "errors": 0} for w in ids}
        for shard in self.shards:
            for worker_id, counts in shard.worker_counters(ids).items():
                totals[worker_id]["completed"] += counts["completed"]
                totals[worker_id]["errors"] += counts["errors"]
        return totals

    @direct
    def stream_tail(self, stream: str) -> StreamTail:
        running_total = stream in (keys.WORK_COMPLETIONS, keys.WORK_ERRORS)
        return merged_tail([shard.stream_tail(stream) for shard in self.shards], running_total)

    @direct
    def read_stream(self, stream: str, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        entries = [entry for shard in self.shards for entry in shard.read_stream(stream, count)]
        entries.sort(key=lambda entry: id_order(entry[0]))
        return entries[-count:] if count else entries

    @direct
    def follow(
        self, positions: dict[str, str], block_s: float, count: int = 1000
    ) -> list[tuple[str, str, dict[str, str]]]:
        """Polls every shard (a blocking read can wait on one slot only). Positions are
        kept per shard under ``stream@i`` keys beside the caller's plain ones."""
        deadline = time.monotonic() + max(0.0, block_s)
        while True:
            entries = []
            for i, shard in enumerate(self.shards):
                mine = {s: positions.get(f"{s}@{i}", p) for s, p in positions.items() if "@" not in s}
                found = shard.follow(mine, block_s=0, count=count)
                for stream, position in mine.items():
                    positions[f"{stream}@{i}"] = position
                entries.extend(found)
            if entries or time.monotonic() >= deadline:
                entries.sort(key=lambda entry: id_order(entry[1]))
                for stream, entry_id, _fields in entries:
                    positions[stream] = entry_id  # the newest overall, for callers that look
                return entries
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))

    @direct
    def inflight(self, worker_id: str) -> list[str]:
        return [raw for shard in self.shards for raw in shard.inflight(worker_id)]

    @direct
    def queue_depths(self, worker_ids: Iterable[str] | None = None) -> dict[str, Any]:
        ids = sorted(self.known_workers() if worker_ids is None else worker_ids)
        return summed_depths([shard.queue_depths(ids) for shard in self.shards])

    @direct
    def dead_letters(self, limit: int | None = 100) -> list[dict[str, Any]]:
        entries = [entry for shard in self.shards for entry in shard.dead_letters(limit)]
        entries.sort(key=lambda entry: entry.get("failed_at") or 0, reverse=True)
        return entries if limit is None else entries[:limit]

    @direct
    def get_results(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        # A keyed task's result lives in its key's shard: look in every shard.
        found: dict[str, dict[str, Any] | None] = dict.fromkeys(task_ids)
        for shard in self.shards:
            missing = [task_id for task_id, result in found.items() if result is None]
            if not missing:
                break
            found.update({k: v for k, v in shard.get_results(missing).items() if v is not None})
        return found

    @direct
    def wait_result(self, task_id: str, timeout_s: float | None) -> dict[str, Any] | None:
        home = self.shards[shard_of(task_id, self.shard_count)]
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            found = self.get_results([task_id])[task_id]
            left = None if deadline is None else deadline - time.monotonic()
            if found is not None or (left is not None and left <= 0):
                return found
            # Block on the shard an unkeyed task's result lands in; poll the others.
            found = home.wait_result(task_id, POLL_S if left is None else min(left, POLL_S))
            if found is not None:
                return found

    @direct
    def task_status(self, task_id: str) -> tuple[str, dict[str, Any] | None]:
        for shard in self.shards:
            status = shard.task_status(task_id)
            if status[0] != "unknown":
                return status
        return "unknown", None

    @direct
    def audit_snapshot(self) -> AuditSnapshot:
        """The sum of each shard's exact (MULTI) snapshot: every invariant is linear
        and holds per shard, so it holds for the sums though shards are read in turn."""
        parts = [shard.audit_snapshot() for shard in self.shards]
        counters = dict.fromkeys(keys.COUNTERS, 0)
        per_worker: dict[str, dict[str, int]] = {}
        for part in parts:
            for name, value in part.counters.items():
                counters[name] += value
            for worker_id, counts in part.per_worker.items():
                mine = per_worker.setdefault(worker_id, {"completed": 0, "errors": 0})
                mine["completed"] += counts["completed"]
                mine["errors"] += counts["errors"]
        return AuditSnapshot(
            counters=counters,
            per_worker=per_worker,
            completions=merged_tail([part.completions for part in parts], running_total=True),
            errors=merged_tail([part.errors for part in parts], running_total=True),
            depths=summed_depths([part.depths for part in parts]),
        )

    def audit(self) -> dict[str, Any]:
        report = super().audit()
        if self._one is None:
            shards_ok = [audit_report(shard.audit_snapshot())["ok"] for shard in self.shards]
            report["checks"]["every_shard_consistent"] = all(shards_ok)
            report["ok"] = report["ok"] and all(shards_ok)
        report["shards"] = len(self.shards)
        return report

    @direct
    def ping(self) -> None:
        self.shards[0].ping()

    @direct
    def clock(self) -> float:
        """Shard 0's server clock (each shard's scripts use their own master's)."""
        return self.shards[0].clock()
