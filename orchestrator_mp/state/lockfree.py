"""RedisLockFreeStateManager: shared state through atomic Redis operations only, on one
server or a Redis Cluster, over S >= 1 shards.

No locks anywhere: each worker writes only its own partition (``worker:{w}:*``),
shared counters change by INCR, streams by XADD, and the queue by moves that keep every
task in exactly one list. Every step is one Lua script of :mod:`.steps` (or a MULTI) on
one shard, run by a private :class:`~.shard.Shard`; this class routes to them.

One shard (one server, the plain layout; or ``--shards 1``) is the fast path: every
call goes straight to its Shard. With S shards (a Redis Cluster, where a script's keys
must share a slot), each shard is a complete layout under its own hash tag
(:func:`keys.shard_prefix`); nothing ever moves between shards:

- Tasks are routed by content (:func:`.shards.shard_of_task`): a limited task type
  by its limit, a keyed task by its partition key (so its lane is in one shard and
  per-key order holds), any other by its id. The same task always goes
  to the same shard; a retried submission re-applies only the shards it missed.
- Each worker registers in every shard (a partition per shard, the same id) and
  claims from them in turn, so no shard starves while any worker lives. A dead
  worker is taken over in every shard; fencing is per shard.
- Totals are the sum of the shards' counters and every invariant holds per shard,
  so :meth:`audit` checks each shard and the sums. Streams are per shard; readers
  merge them by entry id (:mod:`.merge`).
- A blocking read waits on one slot only, so idle workers wait on a doorbell
  (:data:`keys.DOORBELL`, a capped list in its own slot): every call here that makes
  tasks claimable (submit, release, takeover, promotion, a lane or a cap moving on)
  pushes a token per task, and an idle worker woken by one claims from every shard.
- Costs: a claim that finds its shard empty tries the next; a ring is one more
  round trip per submission; a heartbeat renews ``S`` leases. Limits: see
  :class:`~orchestrator_mp.state.redislimits.ShardedLimits`.

Which shard holds what is :mod:`.shards`.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import threading
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence, TypeVar

import redis

from .. import keys
from ..connection import (
    create_client,
    is_cluster,
    is_out_of_memory,
    translate_connection_errors,
)
from ..exceptions import BackendUnavailable, ConfigurationError, Fenced
from ..models import Outcome, new_task_id
from ..wire import SAFE_PREFIX, partition_key_of
from .base import (
    AuditSnapshot,
    Capability,
    ReclaimResult,
    SettleResult,
    StateManager,
    StreamTail,
    audit_report,
)
from .merge import id_order, merged_tail, summed_depths
from .redislimits import ShardedLimits
from .shard import Shard
from .shards import layout, shard_of, shard_of_task
from .steps.claim import checked_claim_count
from .steps.submit import due_spec

_T = TypeVar("_T")
_M = TypeVar("_M", bound=Callable[..., Any])

# How long patient callers (the parent, readers) wait out an unreachable master: a
# cluster promotes a replica after cluster-node-timeout (15 s by default).
PATIENCE_S = 30.0


# How often calls that cannot block on every shard at once poll them (follow, and
# wait_result for a keyed task, whose result may land in any shard).
POLL_S = 0.05


_patience = threading.local()  # set while a call of this thread waits out an outage


def _riding_over_failovers(cls: type) -> type:
    """Class decorator: a patient manager retries a public call that found a shard's
    master unreachable, with backoff, for up to ``PATIENCE_S``: long enough for a
    cluster to promote a replica (redis-py's cluster client retries at once, so it
    gives up within milliseconds). Fail-fast managers (workers) raise at once."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(self: "RedisLockFreeStateManager", *args: Any, **kwargs: Any) -> Any:
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


def _direct(method: _M) -> _M:
    """On one shard the call goes straight to it: the single-server fast path, with the
    plain layout's behaviour (a blocking claim, no doorbell, no per-shard epochs)."""
    name = method.__name__

    @functools.wraps(method)
    def call(self: "RedisLockFreeStateManager", *args: Any, **kwargs: Any) -> Any:
        one = self._one
        if one is not None:
            return getattr(one, name)(*args, **kwargs)
        return method(self, *args, **kwargs)

    return call  # type: ignore[return-value]


@_riding_over_failovers
@translate_connection_errors
class RedisLockFreeStateManager(StateManager):
    """Lock-free state over ``len(spaces)`` shards sharing one client: one Redis server
    (embedded or external) or a Redis Cluster.

    Args:
        url: where the server is (``unix://``, ``redis://``, ``rediss://``); optional
            with ``client``.
        client: a redis-py ``Redis`` or ``RedisCluster`` created in this process.
        spaces: the shards' key spaces (:func:`keys.shard_spaces`); default one shard
            with the plain layout (the names of :mod:`keys` unchanged).
        patience_s: how long a call retries while a shard's master is unreachable
            (a failover); 0 raises BackendUnavailable at once.
        client_retries: let redis-py resend commands after a reconnect (workers: False).
        completions_maxlen: approximate cap of ``work_completions`` / ``work_errors``.
        events_maxlen: approximate cap of the other streams.
        lease_s: how long a worker's lease lasts without a heartbeat.
        result_ttl_s: how long a stored task result is kept.
    """

    kind = "lockfree"
    capabilities = frozenset(Capability)

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        spaces: Sequence[keys.KeySpace] = (keys.PLAIN,),
        patience_s: float = 0.0,
        client_retries: bool = True,
        completions_maxlen: int = 200_000,
        events_maxlen: int = 20_000,
        lease_s: float = 3.0,
        result_ttl_s: float = 86_400.0,
    ) -> None:
        if client is None and url is None:
            raise ConfigurationError("RedisLockFreeStateManager needs a url or a client")
        self.url = url
        self.patience_s = patience_s
        self.redis = client if client is not None else create_client(url, retries=client_retries)
        self.spaces = list(spaces)
        self.shards = [
            Shard(self.redis, space, completions_maxlen=completions_maxlen, events_maxlen=events_maxlen,
                  lease_s=lease_s, result_ttl_s=result_ttl_s)
            for space in self.spaces
        ]
        self._one = self.shards[0] if len(self.shards) == 1 else None
        self.events_maxlen = events_maxlen
        self.completions_maxlen = completions_maxlen
        self._epochs: dict[str, list[int]] = {}
        self._deadlines: set[str] = set()  # workers whose home copy holds a task deadline
        self._turn = itertools.count()

    @property
    def shard_count(self) -> int:  # type: ignore[override]
        return len(self.shards)

    @property
    def on_cluster(self) -> bool:  # type: ignore[override]
        return is_cluster(self.redis)

    def stream_views(self) -> list[tuple[Any, keys.KeySpace]]:
        return [(self.redis, space) for space in self.spaces]

    def pipeline(self) -> Any:
        return self.redis.pipeline(transaction=True)

    def close(self) -> None:
        self.redis.close()

    # -- routing ------------------------------------------------------------------------------
    def _epoch(self, worker_id: str, epoch: int, index: int) -> int:
        """The epoch of a worker in shard ``index`` (each shard fences on its own)."""
        epochs = self._epochs.get(worker_id)
        return epochs[index] if epochs else epoch

    def _each_fenced(self, worker_id: str, epoch: int, call: Callable[[Shard, int], _T]) -> list[_T]:
        """``call(shard, its epoch)`` on every shard; the first Fenced ends it (a
        takeover fences every shard, so one refusal is counted once)."""
        return [call(shard, self._epoch(worker_id, epoch, i)) for i, shard in enumerate(self.shards)]

    def _by_shard(self, raws: Iterable[_T], raw_of: Callable[[_T], str]) -> dict[int, list[_T]]:
        groups: dict[int, list[_T]] = defaultdict(list)
        for item in raws:
            groups[shard_of_task(raw_of(item), self.shard_count)].append(item)
        return groups

    # -- workers -----------------------------------------------------------------------------
    @_direct
    def register_worker(self, worker_id: str, *, pid: int, host: str) -> int:
        """A partition in every shard; the epoch returned is the home shard's (the one
        whose state hash is versioned), the others are kept here for fencing."""
        epochs = [shard.register_worker(worker_id, pid=pid, host=host) for shard in self.shards]
        self._epochs[worker_id] = epochs
        return epochs[shard_of(worker_id, self.shard_count)]

    @_direct
    def heartbeat(self, worker_id: str, epoch: int) -> None:
        self._each_fenced(worker_id, epoch, lambda shard, e: shard.heartbeat(worker_id, e))

    @_direct
    def expired_workers(self) -> list[str]:
        return sorted({w for shard in self.shards for w in shard.expired_workers()})

    @_direct
    def deregister_worker(self, worker_id: str, epoch: int) -> None:
        self._each_fenced(worker_id, epoch, lambda shard, e: shard.deregister_worker(worker_id, e))
        self._epochs.pop(worker_id, None)

    @_direct
    def active_workers(self) -> set[str]:
        return set().union(*(shard.active_workers() for shard in self.shards))

    @_direct
    def known_workers(self) -> set[str]:
        return set().union(*(shard.known_workers() for shard in self.shards))

    @_direct
    def get_worker_state(self, worker_id: str) -> dict[str, str]:
        return self.batch_get_worker_states([worker_id])[worker_id]

    @_direct
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

    @_direct
    def start_task(self, worker_id: str, epoch: int, task_id: str, time_limit_s: float) -> float:
        index = shard_of(worker_id, self.shard_count)
        self._deadlines.add(worker_id)
        return self.shards[index].start_task(worker_id, self._epoch(worker_id, epoch, index), task_id, time_limit_s)

    def update_worker_field(
        self, worker_id: str, field: str, value: object, *, epoch: int | None = None, pipeline: Any = None
    ) -> int:
        index = shard_of(worker_id, self.shard_count)
        own = None if epoch is None else self._epoch(worker_id, epoch, index)
        if field == "deadline" and value:
            self._deadlines.add(worker_id)
        return self.shards[index].update_state(worker_id, {field: value}, None, own, pipeline)

    def update_worker_state(
        self,
        worker_id: str,
        mapping: dict[str, object],
        expected_version: int | None = None,
        *,
        epoch: int | None = None,
    ) -> bool:
        index = shard_of(worker_id, self.shard_count)
        own = None if epoch is None else self._epoch(worker_id, epoch, index)
        if mapping.get("deadline"):
            self._deadlines.add(worker_id)
        return self.shards[index].update_state(worker_id, mapping, expected_version, own) != 0

    # -- counters, metrics, streams -------------------------------------------------------------
    @_direct
    def increment_counter(self, name: str, amount: int = 1, *, pipeline: Any = None) -> int:
        # A hand-made increment lands in shard 0; reads sum the shards.
        self.shards[0].increment_counter(name, amount, pipeline=pipeline)
        return 0 if pipeline is not None else self.get_counter(name)

    @_direct
    def get_counter(self, name: str) -> int:
        return sum(shard.get_counter(name) for shard in self.shards)

    @_direct
    def get_counters(self, names: Sequence[str] = keys.COUNTERS) -> dict[str, int]:
        totals = dict.fromkeys(names, 0)
        for shard in self.shards:
            for name, value in shard.get_counters(names).items():
                totals[name] += value
        return totals

    @_direct
    def worker_counters(self, worker_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        ids = sorted(worker_ids)
        totals = {w: {"completed": 0, "errors": 0} for w in ids}
        for shard in self.shards:
            for worker_id, counts in shard.worker_counters(ids).items():
                totals[worker_id]["completed"] += counts["completed"]
                totals[worker_id]["errors"] += counts["errors"]
        return totals

    @_direct
    def record_metric(
        self, name: str, value: float, tags: dict[str, object] | None = None, *, pipeline: Any = None
    ) -> None:
        self.shards[next(self._turn) % self.shard_count].record_metric(name, value, tags, pipeline=pipeline)

    @_direct
    def stream_tail(self, stream: str) -> StreamTail:
        running_total = stream in (keys.WORK_COMPLETIONS, keys.WORK_ERRORS)
        return merged_tail([shard.stream_tail(stream) for shard in self.shards], running_total)

    @_direct
    def read_stream(self, stream: str, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        entries = [entry for shard in self.shards for entry in shard.read_stream(stream, count)]
        entries.sort(key=lambda entry: id_order(entry[0]))
        return entries[-count:] if count else entries

    @_direct
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

    # -- limits --------------------------------------------------------------------------------
    @_direct
    def retire_finished(self, grace_s: float) -> int:
        """Each shard retires its own copies (a partition lives in every shard)."""
        return sum(shard.retire_finished(grace_s) for shard in self.shards)

    @_direct
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
        when = due_spec(due_at, delay_s)  # refused before any shard is written
        one = self._one
        if one is not None:
            return one.submit(raw_tasks, batch_id, when)
        batch_id = batch_id or new_task_id()
        groups = self._by_shard(raw_tasks, str)
        queued = sum(self.shards[i].submit(raws, f"{batch_id}.{i}", when) for i, raws in sorted(groups.items()))
        if not when:
            self.ring(queued)
        return queued

    @_direct
    def clock(self) -> float:
        """Shard 0's server clock (each shard's scripts use their own master's)."""
        return self.shards[0].clock()

    @_direct
    def promote_due(self, limit: int = 1000) -> int:
        return self.ring(sum(shard.promote_due(limit) for shard in self.shards))

    def ring(self, tasks: int) -> int:
        """Wake up to ``tasks`` idle workers (one token each, the list capped); returns ``tasks``.

        A wake-up only: the step that made the tasks claimable has landed. A full master
        (maxmemory) refuses the push; then idle workers find the tasks at their next poll
        (``block_timeout_s``), and the step is not reported as failed (a resent submit
        or settle would count twice)."""
        if tasks > 0 and self._one is None:  # one shard: idle workers block on its queue
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
        start = next(self._turn) % self.shard_count
        return [(start + k) % self.shard_count for k in range(self.shard_count)]

    @_direct
    def claim(self, worker_id: str, epoch: int, max_count: int, divisor: int = 1) -> list[str]:
        """Fills the batch from the shards in turn (FIFO within each shard)."""
        checked_claim_count(max_count)
        claimed: list[str] = []
        for i in self._turns():
            want = max_count - len(claimed)
            if want <= 0:
                break
            own = self._epoch(worker_id, epoch, i)
            got = self.shards[i].claim(worker_id, own, want, divisor)
            if got and not got[0].startswith(SAFE_PREFIX):
                if not claimed:
                    return got  # a crash suspect runs alone
                self.shards[i].release(worker_id, own, got)  # back to its queue, for a later claim
                break
            claimed += got
            if got and divisor > 1:
                break  # a fair share of a shallow queue
        return claimed

    @_direct
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

    @_direct
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
        home = shard_of(worker_id, self.shard_count)
        if worker_id in self._deadlines and home not in groups:
            # SETTLE clears a published deadline in the task's shard; the parent reads
            # the home copy, so clear it there too (or a finished task would time out).
            self._deadlines.discard(worker_id)
            self.update_worker_state(worker_id, {"deadline": "", "current_task": ""}, epoch=epoch)
        elif home in groups:
            self._deadlines.discard(worker_id)
        return SettleResult(*totals)

    @_direct
    def cancel_queued(self, raw_task: str) -> bool:
        return self.shards[shard_of_task(raw_task, self.shard_count)].cancel_queued(raw_task)

    @_direct
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

    @_direct
    def inflight(self, worker_id: str) -> list[str]:
        return [raw for shard in self.shards for raw in shard.inflight(worker_id)]

    @_direct
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
        cause_shard = shard_of_task(cause.raw, self.shard_count) if cause is not None else -1
        home = shard_of(worker_id, self.shard_count)
        order = [home, *(i for i in range(self.shard_count) if i != home)]
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

    @_direct
    def queue_depths(self, worker_ids: Iterable[str] | None = None) -> dict[str, Any]:
        ids = sorted(self.known_workers() if worker_ids is None else worker_ids)
        return summed_depths([shard.queue_depths(ids) for shard in self.shards])

    @_direct
    def dead_letters(self, limit: int | None = 100) -> list[dict[str, Any]]:
        entries = [entry for shard in self.shards for entry in shard.dead_letters(limit)]
        entries.sort(key=lambda entry: entry.get("failed_at") or 0, reverse=True)
        return entries if limit is None else entries[:limit]

    @_direct
    def retry_dead_letters(self, entries: Sequence[dict[str, Any]]) -> int:
        # A retried task keeps its id and key, so it goes back to the shard it left.
        groups = self._by_shard(entries, lambda entry: entry.get("task", ""))
        return self.ring(sum(self.shards[i].retry_dead_letters(group) for i, group in sorted(groups.items())))

    @_direct
    def purge_dead_letters(self, entries: Sequence[dict[str, Any]] | None = None) -> int:
        if entries is None:
            return sum(shard.purge_dead_letters(None) for shard in self.shards)
        groups = self._by_shard(entries, lambda entry: entry.get("task", ""))
        return sum(self.shards[i].purge_dead_letters(group) for i, group in sorted(groups.items()))

    # -- results -------------------------------------------------------------------------------
    @_direct
    def get_results(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        # A keyed task's result lives in its key's shard: look in every shard.
        found: dict[str, dict[str, Any] | None] = dict.fromkeys(task_ids)
        for shard in self.shards:
            missing = [task_id for task_id, result in found.items() if result is None]
            if not missing:
                break
            found.update({k: v for k, v in shard.get_results(missing).items() if v is not None})
        return found

    @_direct
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

    @_direct
    def task_status(self, task_id: str) -> tuple[str, dict[str, Any] | None]:
        for shard in self.shards:
            status = shard.task_status(task_id)
            if status[0] != "unknown":
                return status
        return "unknown", None

    # -- auditing ------------------------------------------------------------------------------
    @_direct
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

    @_direct
    def ping(self) -> None:
        self.shards[0].ping()


ACTIVITY_FIELDS = ("status", "current_task", "batch", "last_activity")


def open_lockfree(
    url: str | None, *, shards: int | None = None, client_retries: bool = True, client: Any = None, **options: Any
) -> RedisLockFreeStateManager:
    """The lock-free manager for ``url``: the plain layout on one server, shards on a
    cluster (or wherever a sharded layout was chosen, the count the data records)."""
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
        return RedisLockFreeStateManager(url, client=client, client_retries=client_retries, **options)
    patience_s = PATIENCE_S if client_retries else 0.0
    return RedisLockFreeStateManager(
        url, client=client, spaces=keys.shard_spaces(count), patience_s=patience_s, client_retries=client_retries,
        **options,
    )


__all__ = ["RedisLockFreeStateManager", "open_lockfree"]
