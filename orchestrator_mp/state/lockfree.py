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

import itertools
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence, TypeVar, cast

import redis

from .. import keys
from ..connection import (
    create_client,
    is_cluster,
    is_out_of_memory,
    translate_connection_errors,
)
from ..exceptions import ConfigurationError, Fenced
from ..models import Outcome, new_task_id
from ..wire import SAFE_PREFIX, partition_key_of
from .base import (
    Capability,
    ReclaimResult,
    SettleResult,
    StateManager,
)
from .fanout import (
    PATIENCE_S,
    FanOutReads,
    direct,
    riding_over_failovers,
)
from .redislimits import ShardedLimits
from .shard import Shard
from .shards import layout, shard_of, shard_of_task
from .steps.claim import checked_claim_count
from .steps.submit import due_spec

_T = TypeVar("_T")
_M = TypeVar("_M", bound=Callable[..., Any])

@riding_over_failovers
@translate_connection_errors
class RedisLockFreeStateManager(FanOutReads, StateManager):
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
        # cast: url is not None when client is (checked above)
        self.redis = client if client is not None else create_client(cast(str, url), retries=client_retries)
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
    def shard_count(self) -> int:  # type: ignore[override]  # a property for the contract's class attribute
        return len(self.shards)

    @property
    def on_cluster(self) -> bool:  # type: ignore[override]  # as shard_count
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
    @direct
    def register_worker(self, worker_id: str, *, pid: int, host: str) -> int:
        """A partition in every shard; the epoch returned is the home shard's (the one
        whose state hash is versioned), the others are kept here for fencing."""
        epochs = [shard.register_worker(worker_id, pid=pid, host=host) for shard in self.shards]
        self._epochs[worker_id] = epochs
        return epochs[shard_of(worker_id, self.shard_count)]

    @direct
    def heartbeat(self, worker_id: str, epoch: int) -> None:
        self._each_fenced(worker_id, epoch, lambda shard, e: shard.heartbeat(worker_id, e))

    @direct
    def deregister_worker(self, worker_id: str, epoch: int) -> None:
        self._each_fenced(worker_id, epoch, lambda shard, e: shard.deregister_worker(worker_id, e))
        self._epochs.pop(worker_id, None)

    @direct
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
    @direct
    def increment_counter(self, name: str, amount: int = 1, *, pipeline: Any = None) -> int:
        # A hand-made increment lands in shard 0; reads sum the shards.
        self.shards[0].increment_counter(name, amount, pipeline=pipeline)
        return 0 if pipeline is not None else self.get_counter(name)

    @direct
    def record_metric(
        self, name: str, value: float, tags: dict[str, object] | None = None, *, pipeline: Any = None
    ) -> None:
        self.shards[next(self._turn) % self.shard_count].record_metric(name, value, tags, pipeline=pipeline)

    # -- limits --------------------------------------------------------------------------------
    @direct
    def retire_finished(self, grace_s: float) -> int:
        """Each shard retires its own copies (a partition lives in every shard)."""
        return sum(shard.retire_finished(grace_s) for shard in self.shards)

    @direct
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

    @direct
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

    @direct
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

    @direct
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

    @direct
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

    @direct
    def cancel_queued(self, raw_task: str) -> bool:
        return self.shards[shard_of_task(raw_task, self.shard_count)].cancel_queued(raw_task)

    @direct
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

    @direct
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

    @direct
    def retry_dead_letters(self, entries: Sequence[dict[str, Any]]) -> int:
        # A retried task keeps its id and key, so it goes back to the shard it left.
        groups = self._by_shard(entries, lambda entry: entry.get("task", ""))
        return self.ring(sum(self.shards[i].retry_dead_letters(group) for i, group in sorted(groups.items())))

    @direct
    def purge_dead_letters(self, entries: Sequence[dict[str, Any]] | None = None) -> int:
        if entries is None:
            return sum(shard.purge_dead_letters(None) for shard in self.shards)
        groups = self._by_shard(entries, lambda entry: entry.get("task", ""))
        return sum(self.shards[i].purge_dead_letters(group) for i, group in sorted(groups.items()))

    # -- results -------------------------------------------------------------------------------
    # -- auditing ------------------------------------------------------------------------------
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
