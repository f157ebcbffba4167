"""ShardedStateManager: the lock-free state split over hash-tagged shards (Redis Cluster).

A Redis Cluster refuses any script, MULTI or multi-key command whose keys span two
hash slots. So the data is split into ``S`` shards, each a complete lock-free layout
(queue, delayed set, dead letters, counters, streams, lanes, limiters, results, and
one partition per worker) under its own hash tag (:func:`keys.shard_prefix`). Every
atomic step of a shard is one :class:`RedisLockFreeStateManager` call on one slot,
exactly as on a single server; nothing ever moves between shards.

- Tasks are routed by content (:func:`.shards.shard_of_task`): a limited task type
  by its limit, a keyed task by its partition key (so its lane is in one shard and
  per-key order holds), any other by its id. The same task always goes
  to the same shard; a retried submission re-applies only the shards it missed.
- Each worker registers in every shard (a partition per shard, the same id) and
  claims from them in turn, so no shard starves while any worker lives. A dead
  worker is taken over in every shard; fencing is per shard.
- Totals are the sum of the shards' counters and every invariant holds per shard,
  so :meth:`audit` checks each shard and the sums. Streams are per shard; readers
  merge them by entry id.
- A blocking read waits on one slot only, so idle workers wait on a doorbell
  (:data:`keys.DOORBELL`, a capped list in its own slot): every call here that makes
  tasks claimable (submit, release, takeover, promotion, a lane or a cap moving on)
  pushes a token per task, and an idle worker woken by one claims from every shard.
- Costs: a claim that finds its shard empty tries the next; a ring is one more
  round trip per submission; a heartbeat renews ``S`` leases. Limits: see
  :class:`~orchestrator_mp.state.shardedlimits.ShardedLimits`.

Which shard holds what is :mod:`.shards`; the README's "Redis Cluster" section has
the measured costs.
"""
from __future__ import annotations

import functools
import itertools
import threading
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence, TypeVar

import redis

from .. import keys
from ..connection import create_client, is_out_of_memory, translate_connection_errors
from ..exceptions import BackendUnavailable, ConfigurationError, Fenced
from ..models import Outcome, new_task_id, partition_key_of
from . import common
from .base import AuditSnapshot, ReclaimResult, SettleResult, StateManager, StreamTail
from .lockfree import RedisLockFreeStateManager
from .shardedlimits import ShardedLimits
from .shards import layout, shard_of, shard_of_task

_T = TypeVar("_T")

# How long patient callers (the parent, readers) wait out an unreachable master: a
# cluster promotes a replica after cluster-node-timeout (15 s by default).
PATIENCE_S = 30.0

# Raw tasks start with their crash count: anything else is a suspect, claimed alone.
SAFE_TASK_PREFIX = '{"crashes":0,'

# How often calls that cannot block on every shard at once poll them (follow, and
# wait_result for a keyed task, whose result may land in any shard).
POLL_S = 0.05


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


_patience = threading.local()  # set while a call of this thread waits out an outage


def _riding_over_failovers(cls: type) -> type:
    """Class decorator: a patient manager retries a public call that found a shard's
    master unreachable, with backoff, for up to ``PATIENCE_S``: long enough for a
    cluster to promote a replica (redis-py's cluster client retries at once, so it
    gives up within milliseconds). Fail-fast managers (workers) raise at once."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(self: "ShardedStateManager", *args: Any, **kwargs: Any) -> Any:
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
        if not name.startswith("_") and callable(member) and name not in ("close", "ring"):
            setattr(cls, name, wrap(member))
    return cls


@_riding_over_failovers
@translate_connection_errors
class ShardedStateManager(StateManager):
    """Lock-free state over ``len(spaces)`` shards sharing one client (a cluster or one server).

    Args:
        client: a redis-py ``RedisCluster`` (or ``Redis``) created in this process.
        spaces: the shards' key spaces (:func:`keys.shard_spaces`).
        patience_s: how long a call retries while a shard's master is unreachable
            (a failover); 0 raises BackendUnavailable at once.
        options: passed to each shard's :class:`RedisLockFreeStateManager`.
    """

    kind = "lockfree"

    def __init__(
        self,
        client: Any,
        spaces: Sequence[keys.KeySpace],
        *,
        url: str | None = None,
        patience_s: float = 0.0,
        **options: Any,
    ) -> None:
        self.url = url
        self.patience_s = patience_s
        self.redis = client
        self.spaces = list(spaces)
        self.shards = [RedisLockFreeStateManager(url, client=client, space=space, **options) for space in self.spaces]
        self.events_maxlen = self.shards[0].events_maxlen
        self._epochs: dict[str, list[int]] = {}
        self._deadlines: set[str] = set()  # workers whose home copy holds a task deadline
        self._turn = itertools.count()

    @property
    def count(self) -> int:
        return len(self.shards)

    def close(self) -> None:
        self.redis.close()

    # -- routing ------------------------------------------------------------------------------
    def _epoch(self, worker_id: str, epoch: int, index: int) -> int:
        """The epoch of a worker in shard ``index`` (each shard fences on its own)."""
        epochs = self._epochs.get(worker_id)
        return epochs[index] if epochs else epoch

    def _each_fenced(self, worker_id: str, epoch: int, call: Callable[[RedisLockFreeStateManager, int], _T]) -> list[_T]:
        """``call(shard, its epoch)`` on every shard; the first Fenced ends it (a
        takeover fences every shard, so one refusal is counted once)."""
        return [call(shard, self._epoch(worker_id, epoch, i)) for i, shard in enumerate(self.shards)]

    def _by_shard(self, raws: Iterable[_T], raw_of: Callable[[_T], str]) -> dict[int, list[_T]]:
        groups: dict[int, list[_T]] = defaultdict(list)
        for item in raws:
            groups[shard_of_task(raw_of(item), self.count)].append(item)
        return groups

    # -- workers -----------------------------------------------------------------------------
    def register_worker(self, worker_id: str, *, pid: int, host: str) -> int:
        """A partition in every shard; the epoch returned is the home shard's (the one
        whose state hash is versioned), the others are kept here for fencing."""
        epochs = [shard.register_worker(worker_id, pid=pid, host=host) for shard in self.shards]
        self._epochs[worker_id] = epochs
        return epochs[shard_of(worker_id, self.count)]

    def heartbeat(self, worker_id: str, epoch: int) -> None:
        self._each_fenced(worker_id, epoch, lambda shard, e: shard.heartbeat(worker_id, e))

    def expired_workers(self) -> list[str]:
        return sorted({w for shard in self.shards for w in shard.expired_workers()})

    def deregister_worker(self, worker_id: str, epoch: int) -> None:
        self._each_fenced(worker_id, epoch, lambda shard, e: shard.deregister_worker(worker_id, e))
        self._epochs.pop(worker_id, None)

    def active_workers(self) -> set[str]:
        return set().union(*(shard.active_workers() for shard in self.shards))

    def known_workers(self) -> set[str]:
        return set().union(*(shard.known_workers() for shard in self.shards))

    def get_worker_state(self, worker_id: str) -> dict[str, str]:
        return self.batch_get_worker_states([worker_id])[worker_id]

    def batch_get_worker_states(self, worker_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """The home copy (versioned fields); while a batch claimed from another shard
        runs, that shard's copy says so (claims and settles write their shard's copy)."""
        ids = list(worker_ids)
        copies = [shard.batch_get_worker_states(ids) for shard in self.shards]
        states = {}
        for worker_id in ids:
            home = dict(copies[shard_of(worker_id, self.count)][worker_id])
            busy = [part[worker_id] for part in copies if part[worker_id].get("status") == "busy"]
            if busy and home.get("status") != "busy":
                home.update({f: busy[0][f] for f in ACTIVITY_FIELDS if f in busy[0]})
            states[worker_id] = home
        return states

    def start_task(self, worker_id: str, epoch: int, task_id: str, time_limit_s: float) -> float:
        index = shard_of(worker_id, self.count)
        self._deadlines.add(worker_id)
        return self.shards[index].start_task(worker_id, self._epoch(worker_id, epoch, index), task_id, time_limit_s)

    def update_worker_field(
        self, worker_id: str, field: str, value: object, *, epoch: int | None = None, pipeline: Any = None
    ) -> int:
        index = shard_of(worker_id, self.count)
        own = None if epoch is None else self._epoch(worker_id, epoch, index)
        if field == "deadline" and value:
            self._deadlines.add(worker_id)
        return self.shards[index].update_worker_field(worker_id, field, value, epoch=own, pipeline=pipeline)

    def update_worker_state(
        self,
        worker_id: str,
        mapping: dict[str, object],
        expected_version: int | None = None,
        *,
        epoch: int | None = None,
    ) -> bool:
        index = shard_of(worker_id, self.count)
        own = None if epoch is None else self._epoch(worker_id, epoch, index)
        if mapping.get("deadline"):
            self._deadlines.add(worker_id)
        return self.shards[index].update_worker_state(worker_id, mapping, expected_version, epoch=own)

    # -- counters, metrics, streams -------------------------------------------------------------
    def increment_counter(self, name: str, amount: int = 1, *, pipeline: Any = None) -> int:
        # A hand-made increment lands in shard 0; reads sum the shards.
        self.shards[0].increment_counter(name, amount, pipeline=pipeline)
        return 0 if pipeline is not None else self.get_counter(name)

    def get_counter(self, name: str) -> int:
        return sum(shard.get_counter(name) for shard in self.shards)

    def get_counters(self, names: Sequence[str] = keys.COUNTERS) -> dict[str, int]:
        totals = dict.fromkeys(names, 0)
        for shard in self.shards:
            for name, value in shard.get_counters(names).items():
                totals[name] += value
        return totals

    def worker_counters(self, worker_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        ids = sorted(worker_ids)
        totals = {w: {"completed": 0, "errors": 0} for w in ids}
        for shard in self.shards:
            for worker_id, counts in shard.worker_counters(ids).items():
                totals[worker_id]["completed"] += counts["completed"]
                totals[worker_id]["errors"] += counts["errors"]
        return totals

    def record_metric(
        self, name: str, value: float, tags: dict[str, object] | None = None, *, pipeline: Any = None
    ) -> None:
        self.shards[next(self._turn) % self.count].record_metric(name, value, tags, pipeline=pipeline)

    def stream_tail(self, stream: str) -> StreamTail:
        running_total = stream in (keys.WORK_COMPLETIONS, keys.WORK_ERRORS)
        return _merged_tail([shard.stream_tail(stream) for shard in self.shards], running_total)

    def read_stream(self, stream: str, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        entries = [entry for shard in self.shards for entry in shard.read_stream(stream, count)]
        entries.sort(key=lambda entry: _id_order(entry[0]))
        return entries[-count:] if count else entries

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
                entries.sort(key=lambda entry: _id_order(entry[1]))
                for stream, entry_id, _fields in entries:
                    positions[stream] = entry_id  # the newest overall, for callers that look
                return entries
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))

    # -- limits --------------------------------------------------------------------------------
    def retire_finished(self, grace_s: float) -> int:
        """Each shard retires its own copies (a partition lives in every shard)."""
        return sum(shard.retire_finished(grace_s) for shard in self.shards)

    def limits(self, worker_id: str | None = None) -> "ShardedLimits":
        return ShardedLimits([shard.limits(worker_id) for shard in self.shards], self.ring, self._epoch, worker_id)

    # -- the queue -----------------------------------------------------------------------------
    def submit(
        self,
        raw_tasks: Sequence[str],
        batch_id: str | None = None,
        due_at: float | None = None,
        *,
        delay_s: float | None = None,
    ) -> int:
        common.due_spec(due_at, delay_s)  # refused before any shard is written
        batch_id = batch_id or new_task_id()
        groups = self._by_shard(raw_tasks, str)
        queued = sum(
            self.shards[i].submit(raws, batch_id=f"{batch_id}.{i}", due_at=due_at, delay_s=delay_s)
            for i, raws in sorted(groups.items())
        )
        if due_at is None and delay_s is None:
            self.ring(queued)
        return queued

    def clock(self) -> float:
        """Shard 0's server clock (each shard's scripts use their own master's)."""
        return self.shards[0].clock()

    def promote_due(self, limit: int = 1000) -> int:
        return self.ring(sum(shard.promote_due(limit) for shard in self.shards))

    def ring(self, tasks: int) -> int:
        """Wake up to ``tasks`` idle workers (one token each, the list capped); returns ``tasks``.

        A wake-up only: the step that made the tasks claimable has landed. A full master
        (maxmemory) refuses the push; then idle workers find the tasks at their next poll
        (``block_timeout_s``), and the step is not reported as failed (a resent submit
        or settle would count twice)."""
        if tasks > 0:
            pipe = self.redis.pipeline(transaction=False)
            pipe.lpush(keys.DOORBELL, *["1"] * min(tasks, keys.DOORBELL_CAP))
            pipe.ltrim(keys.DOORBELL, 0, keys.DOORBELL_CAP - 1)
            try:
                pipe.execute()
            except redis.ResponseError as exc:
                if not is_out_of_memory(exc):
                    raise
        return tasks

    def _turns(self) -> list[int]:
        """Shard indexes starting from the next in turn, so claims spread over shards."""
        start = next(self._turn) % self.count
        return [(start + k) % self.count for k in range(self.count)]

    def claim(self, worker_id: str, epoch: int, max_count: int, divisor: int = 1) -> list[str]:
        """Fills the batch from the shards in turn (FIFO within each shard)."""
        common.checked_claim_count(max_count)
        claimed: list[str] = []
        for i in self._turns():
            want = max_count - len(claimed)
            if want <= 0:
                break
            own = self._epoch(worker_id, epoch, i)
            got = self.shards[i].claim(worker_id, own, want, divisor)
            if got and not got[0].startswith(SAFE_TASK_PREFIX):
                if not claimed:
                    return got  # a crash suspect runs alone
                self.shards[i].release(worker_id, own, got)  # back to its queue, for a later claim
                break
            claimed += got
            if got and divisor > 1:
                break  # a fair share of a shallow queue
        return claimed

    def wait_claim(self, worker_id: str, epoch: int, max_count: int, divisor: int, timeout_s: float) -> list[str]:
        claimed = self.claim(worker_id, epoch, max_count, divisor)
        if claimed:
            return claimed
        # Wake for a doorbell token, or in time for the soonest delayed task (a claim
        # promotes it), or at the timeout, whichever comes first.
        pipe = self.redis.pipeline(transaction=False)
        for space in self.spaces:
            pipe.zrange(space.DELAYED, 0, 0, withscores=True)
        due = [entries[0][1] for entries in pipe.execute() if entries]
        if due:
            timeout_s = min(timeout_s, max(0.001, min(due) - self.clock()))
        self.redis.blpop([keys.DOORBELL], timeout=timeout_s)
        return self.claim(worker_id, epoch, max_count, divisor)

    def settle(self, worker_id: str, epoch: int, outcomes: Sequence[Outcome]) -> SettleResult:
        totals = [0, 0, 0]
        groups = self._by_shard(outcomes, lambda outcome: outcome.raw)
        fenced = False
        for i, group in sorted(groups.items()):
            try:
                result = self.shards[i].settle(worker_id, self._epoch(worker_id, epoch, i), group)
            except Fenced:
                fenced = True
                continue
            totals = [totals[0] + result.completed, totals[1] + result.failed, totals[2] + result.duplicates]
        self.ring(sum(1 for outcome in outcomes if partition_key_of(outcome.raw) is not None))  # lanes move on
        if fenced:
            raise Fenced(worker_id, epoch)
        home = shard_of(worker_id, self.count)
        if worker_id in self._deadlines and home not in groups:
            # SETTLE clears a published deadline in the task's shard; the parent reads
            # the home copy, so clear it there too (or a finished task would time out).
            self._deadlines.discard(worker_id)
            self.update_worker_state(worker_id, {"deadline": "", "current_task": ""}, epoch=epoch)
        elif home in groups:
            self._deadlines.discard(worker_id)
        return SettleResult(*totals)

    def cancel_queued(self, raw_task: str) -> bool:
        return self.shards[shard_of_task(raw_task, self.count)].cancel_queued(raw_task)

    def release(self, worker_id: str, epoch: int, raw_tasks: Sequence[str]) -> int:
        released, fenced = 0, False
        for i, group in sorted(self._by_shard(raw_tasks, str).items()):
            try:
                released += self.shards[i].release(worker_id, self._epoch(worker_id, epoch, i), group)
            except Fenced:
                fenced = True
        self.ring(released)
        if fenced:
            raise Fenced(worker_id, epoch)
        return released

    def inflight(self, worker_id: str) -> list[str]:
        return [raw for shard in self.shards for raw in shard.inflight(worker_id)]

    def reclaim(
        self,
        worker_id: str,
        *,
        max_crashes: int,
        reason: str = "died",
        crashed: bool = True,
        only_if_expired: bool = False,
        cause: Outcome | None = None,
        deadline_of: str | None = None,
    ) -> ReclaimResult | None:
        cause_shard = shard_of_task(cause.raw, self.count) if cause is not None else -1
        home = shard_of(worker_id, self.count)
        order = [home, *(i for i in range(self.count) if i != home)]
        results: list[ReclaimResult | None] = []
        for i in order:
            result = self.shards[i].reclaim(
                worker_id,
                max_crashes=max_crashes,
                reason=reason,
                crashed=crashed,
                only_if_expired=only_if_expired,
                cause=cause if i == cause_shard else None,
                # The deadline lives in the home shard's copy: the takeover goes on only
                # if it still stands there (that step fences the worker first).
                deadline_of=deadline_of if i == home else None,
            )
            if i == home and deadline_of is not None and result is None:
                return None
            results.append(result)
        done = [result for result in results if result is not None]
        if not done:
            return None
        self.ring(sum(result.requeued for result in done))
        return ReclaimResult(
            max(result.epoch for result in done),
            sum(result.requeued for result in done),
            sum(result.dead_lettered for result in done),
        )

    def queue_depths(self, worker_ids: Iterable[str] | None = None) -> dict[str, Any]:
        ids = sorted(self.known_workers() if worker_ids is None else worker_ids)
        return _summed_depths([shard.queue_depths(ids) for shard in self.shards])

    def dead_letters(self, limit: int | None = 100) -> list[dict[str, Any]]:
        entries = [entry for shard in self.shards for entry in shard.dead_letters(limit)]
        entries.sort(key=lambda entry: entry.get("failed_at") or 0, reverse=True)
        return entries if limit is None else entries[:limit]

    def retry_dead_letters(self, entries: Sequence[dict[str, Any]]) -> int:
        # A retried task keeps its id and key, so it goes back to the shard it left.
        groups = self._by_shard(entries, lambda entry: entry.get("task", ""))
        return self.ring(sum(self.shards[i].retry_dead_letters(group) for i, group in sorted(groups.items())))

    def purge_dead_letters(self, entries: Sequence[dict[str, Any]] | None = None) -> int:
        if entries is None:
            return sum(shard.purge_dead_letters(None) for shard in self.shards)
        groups = self._by_shard(entries, lambda entry: entry.get("task", ""))
        return sum(self.shards[i].purge_dead_letters(group) for i, group in sorted(groups.items()))

    # -- results -------------------------------------------------------------------------------
    def get_results(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        # A keyed task's result lives in its key's shard: look in every shard.
        found: dict[str, dict[str, Any] | None] = dict.fromkeys(task_ids)
        for shard in self.shards:
            missing = [task_id for task_id, result in found.items() if result is None]
            if not missing:
                break
            found.update({k: v for k, v in shard.get_results(missing).items() if v is not None})
        return found

    def wait_result(self, task_id: str, timeout_s: float | None) -> dict[str, Any] | None:
        home = self.shards[shard_of(task_id, self.count)]
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

    def task_status(self, task_id: str) -> tuple[str, dict[str, Any] | None]:
        for shard in self.shards:
            status = shard.task_status(task_id)
            if status[0] != "unknown":
                return status
        return "unknown", None

    # -- auditing ------------------------------------------------------------------------------
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
            completions=_merged_tail([part.completions for part in parts], running_total=True),
            errors=_merged_tail([part.errors for part in parts], running_total=True),
            depths=_summed_depths([part.depths for part in parts]),
        )

    def audit(self) -> dict[str, Any]:
        report = super().audit()
        shards_ok = [shard.audit()["ok"] for shard in self.shards]
        report["checks"]["every_shard_consistent"] = all(shards_ok)
        report["ok"] = report["ok"] and all(shards_ok)
        report["shards"] = len(self.shards)
        return report

    def ping(self) -> None:
        self.shards[0].ping()


ACTIVITY_FIELDS = ("status", "current_task", "batch", "last_activity")


def _merged_tail(tails: Sequence[StreamTail], running_total: bool = False) -> StreamTail:
    """One tail for a stream kept per shard: total length, newest entry overall. With
    ``running_total``, ``n`` (each shard's running count) becomes the sum of the shards'."""
    present = [tail for tail in tails if tail.last]
    length = sum(tail.length for tail in tails)
    if not present:
        return StreamTail(length=length, last={})
    newest = max(present, key=lambda tail: _id_order(tail.last_id))
    last = dict(newest.last)
    if running_total:
        last["n"] = str(sum(int(tail.last.get("n", 0)) for tail in present))
    return StreamTail(length=length, last=last, last_id=newest.last_id)


def _summed_depths(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The shards' depths added up, and ``by_shard``: each shard's own (to spot one
    that carries more than its share, e.g. all tasks of a limited type)."""
    depths: dict[str, Any] = {"by_worker": {}}
    for part in parts:
        for name, value in part.items():
            if name == "by_worker":
                for worker_id, n in value.items():
                    depths["by_worker"][worker_id] = depths["by_worker"].get(worker_id, 0) + n
            else:
                depths[name] = depths.get(name, 0) + value
    depths["by_shard"] = [{k: v for k, v in part.items() if k != "by_worker"} for part in parts]
    return depths


def open_lockfree(
    url: str | None, *, shards: int | None = None, client_retries: bool = True, client: Any = None, **options: Any
) -> StateManager:
    """The lock-free manager for ``url``: plain on one server, sharded on a cluster
    (or wherever a sharded layout was chosen)."""
    if client is None:
        if url is None:
            raise ConfigurationError("the lock-free state needs a url or a client")
        client = create_client(url, retries=client_retries)
    try:
        count = layout(client, shards)
    except redis.ConnectionError:
        # Unreachable now: the first call reports it (BackendUnavailable); build what
        # was asked for so that call can be made.
        count = shards
    if count is None:
        return RedisLockFreeStateManager(url, client=client, **options)
    patience_s = PATIENCE_S if client_retries else 0.0
    return ShardedStateManager(client, keys.shard_spaces(count), url=url, patience_s=patience_s, **options)


__all__ = ["ShardedStateManager", "open_lockfree"]
