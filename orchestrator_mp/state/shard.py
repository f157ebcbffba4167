"""One shard of the lock-free state: its key space on one client, each call one step.

:class:`~.lockfree.RedisLockFreeStateManager` holds one of these per shard (one on a
single server) and routes to them; nothing outside it uses a Shard. Every method is one
atomic server call (a step's script from :mod:`.steps`, a MULTI, or plain reads), so a
Shard knows nothing of the other shards, of failovers or of doorbells.

Data flow of one task (K = batch size; one round trip per arrow pair)::

    submitter ──SUBMIT.lua (LPUSH queue:pending ×n, INCRBY total_work_created n)──▶ queue
    worker w  ──CLAIM.lua (LRANGE + LTRIM K → LPUSH worker:{w}:inflight, state busy)──▶ in-flight
              (queue empty: BLMOVE queue → in-flight blocks, then CLAIM.lua marks busy)
              ... runs the K tasks in-process ...
    worker w  ──SETTLE.lua (per task: LREM in-flight; INCR worker + total counter;
                XADD work_completions | work_errors + LPUSH dead-letter; state idle)──▶
    parent    ──RECLAIM.lua when w dies (epoch+1; in-flight → queue front)──▶ queue

Round trips per task: 2/K in a deep queue (claim + settle per batch), 3 for a task that
arrives at an idle worker (BLMOVE, CLAIM, SETTLE).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence, cast

from .. import keys
from ..exceptions import Fenced
from ..keys import SUBMIT_MARKER_TTL_S
from ..models import Outcome, new_task_id
from .base import ReclaimResult, SettleResult
from .redislimits import RedisLimits
from .redisreads import RedisReadsMixin
from .steps import claim, deadletters, reclaim, release, retire, settle, submit, workers


class Shard(RedisReadsMixin):
    """One key space (the plain layout, or one shard of a sharded one) on ``client``.

    Args:
        client: a redis-py client created in this process.
        space: the keys this shard works on.
        completions_maxlen / events_maxlen / lease_s / result_ttl_s: as for the manager.
    """

    def __init__(
        self,
        client: Any,
        space: keys.KeySpace,
        *,
        completions_maxlen: int,
        events_maxlen: int,
        lease_s: float,
        result_ttl_s: float,
    ) -> None:
        self.redis = client
        self.space = space
        self.completions_maxlen = completions_maxlen
        self.events_maxlen = events_maxlen
        self.lease_ms = max(1, int(lease_s * 1000))
        self.result_ttl_ms = max(1, int(result_ttl_s * 1000))
        register = client.register_script
        self._register = register(workers.REGISTER)
        self._heartbeat = register(workers.HEARTBEAT)
        self._deregister = register(workers.DEREGISTER)
        self._update_state = register(workers.UPDATE_STATE)
        self._start_task = register(workers.START_TASK)
        self._submit = register(submit.SUBMIT)
        self._promote = register(submit.PROMOTE)
        self._cancel = register(submit.CANCEL)
        self._claim = register(claim.CLAIM)
        self._settle = register(settle.SETTLE)
        self._release = register(release.RELEASE)
        self._reclaim = register(reclaim.RECLAIM)
        self._retire = register(retire.RETIRE)
        self._dlq_retry = register(deadletters.DLQ_RETRY)
        self._dlq_purge = register(deadletters.DLQ_PURGE)

    # -- workers --------------------------------------------------------------------------
    def register_worker(self, worker_id: str, *, pid: int, host: str) -> int:
        keys_, args = workers.register_call(self.space, worker_id, pid, host, self.events_maxlen, self.lease_ms)
        epoch, _version = self._register(keys=keys_, args=args)
        return int(epoch)

    def heartbeat(self, worker_id: str, epoch: int) -> None:
        keys_, args = workers.heartbeat_call(self.space, worker_id, epoch, self.lease_ms)
        if self._heartbeat(keys=keys_, args=args) == -1:
            raise Fenced(worker_id, epoch)

    def deregister_worker(self, worker_id: str, epoch: int) -> None:
        keys_, args = workers.deregister_call(self.space, worker_id, epoch, self.events_maxlen)
        if self._deregister(keys=keys_, args=args) == -1:
            raise Fenced(worker_id, epoch)

    def get_worker_state(self, worker_id: str) -> dict[str, str]:
        return cast("dict[str, str]", self.redis.hgetall(self.space.worker_state_key(worker_id)))

    def batch_get_worker_states(self, worker_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        ids = list(worker_ids)
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in ids:
            pipe.hgetall(self.space.worker_state_key(worker_id))
        return dict(zip(ids, pipe.execute(), strict=True))

    def update_state(
        self,
        worker_id: str,
        mapping: dict[str, object],
        expected_version: int | None,
        epoch: int | None,
        pipeline: Any = None,
    ) -> int:
        """UPDATE_STATE: the new version, 0 for a stale one (0 too when queued in ``pipeline``)."""
        fields = workers.checked_fields(mapping)
        keys_, args = workers.update_call(self.space, worker_id, fields, expected_version, epoch, self.events_maxlen)
        result = self._update_state(keys=keys_, args=args, client=pipeline if pipeline is not None else self.redis)
        if pipeline is not None:
            return 0
        if result == -1:
            raise Fenced(worker_id, epoch if epoch is not None else -1)
        return int(result)

    def start_task(self, worker_id: str, epoch: int, task_id: str, time_limit_s: float) -> float:
        keys_, args = workers.start_task_call(self.space, worker_id, epoch, task_id, time_limit_s, self.events_maxlen)
        deadline = self._start_task(keys=keys_, args=args)
        if deadline == -1:
            raise Fenced(worker_id, epoch)
        return float(deadline)

    def increment_counter(self, name: str, amount: int = 1, *, pipeline: Any = None) -> int:
        target = pipeline if pipeline is not None else self.redis
        result = target.incrby(self.space.counter_key(name), amount)
        return 0 if pipeline is not None else int(result)

    # -- the queue ------------------------------------------------------------------------
    def submit(self, raw_tasks: Sequence[str], batch_id: str | None, when: str) -> int:
        """SUBMIT (``when`` from :func:`.steps.submit.due_spec`)."""
        if not raw_tasks:
            return 0
        keys_, args = submit.submit_call(self.space, raw_tasks, batch_id or new_task_id(), when, SUBMIT_MARKER_TTL_S)
        return int(self._submit(keys=keys_, args=args))

    def promote_due(self, limit: int = 1000) -> int:
        keys_, args = submit.promote_call(self.space, limit)
        return int(self._promote(keys=keys_, args=args))

    def claim(self, worker_id: str, epoch: int, max_count: int, divisor: int = 1, moved: int = 0) -> list[str]:
        """CLAIM; ``moved`` counts tasks a blocking move already put in flight."""
        claim.checked_claim_count(max_count)
        keys_, args = claim.claim_call(self.space, worker_id, epoch, max_count, divisor, self.events_maxlen, moved)
        result = self._claim(keys=keys_, args=args)
        if result == -1:
            raise Fenced(worker_id, epoch)
        return cast("list[str]", result)

    def wait_claim(self, worker_id: str, epoch: int, max_count: int, divisor: int, timeout_s: float) -> list[str]:
        """Claim, else block on this shard's queue (BLMOVE) and complete the claim."""
        claim.checked_claim_count(max_count)
        claimed = self.claim(worker_id, epoch, max_count, divisor)
        if claimed:
            return claimed
        # Wake in time for the next delayed task (a retry, a scheduled or rate-limited
        # task): the next claim promotes it, so delays are kept to the millisecond.
        # Due times are on the server's clock: read it beside the soonest one.
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(self.space.DELAYED, 0, 0, withscores=True)
        pipe.time()
        soonest, (seconds, micros) = pipe.execute()
        if soonest:
            timeout_s = min(timeout_s, max(0.001, soonest[0][1] - (seconds + micros / 1e6)))
        # Block on the queue itself; BLMOVE lands the task straight in our in-flight
        # list, so it is never anywhere else. A worker fenced while blocked hands it
        # back with its next (refused) claim.
        # redis-py types the timeout as int; BLMOVE takes seconds as a double (to the millisecond here).
        inflight_key = self.space.worker_inflight_key(worker_id)
        reply = self.redis.blmove(self.space.QUEUE, inflight_key, timeout_s, "RIGHT", "LEFT")  # type: ignore[arg-type]
        first = cast("str | None", reply)
        if first is None:
            return []
        more = self.claim(worker_id, epoch, max_count - 1, divisor, moved=1)
        return [first, *more]

    def settle(self, worker_id: str, epoch: int, outcomes: Sequence[Outcome]) -> SettleResult:
        if not outcomes:
            return SettleResult(0, 0, 0)
        keys_, args = settle.settle_call(
            self.space, worker_id, epoch, outcomes, completions_maxlen=self.completions_maxlen,
            events_maxlen=self.events_maxlen, result_ttl_ms=self.result_ttl_ms,
        )
        result = self._settle(keys=keys_, args=args)
        if result[0] == -1:
            raise Fenced(worker_id, epoch)
        return SettleResult(*map(int, result))

    def cancel_queued(self, raw_task: str) -> bool:
        keys_, args = submit.cancel_call(self.space, raw_task)
        cancelled: bool = self._cancel(keys=keys_, args=args) == 1
        return cancelled

    def release(self, worker_id: str, epoch: int, raw_tasks: Sequence[str]) -> int:
        if not raw_tasks:
            return 0
        keys_, args = release.release_call(self.space, worker_id, epoch, raw_tasks)
        result = self._release(keys=keys_, args=args)
        if result == -1:
            raise Fenced(worker_id, epoch)
        return int(result)

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
        keys_, args = reclaim.reclaim_call(
            self.space, worker_id, self.inflight(worker_id), max_crashes=max_crashes, reason=reason, crashed=crashed,
            only_if_expired=only_if_expired, cause=cause, deadline_of=deadline_of, events_maxlen=self.events_maxlen,
            completions_maxlen=self.completions_maxlen, result_ttl_ms=self.result_ttl_ms,
        )
        return reclaim.reclaim_result(self._reclaim(keys=keys_, args=args))

    def retire_finished(self, grace_s: float) -> int:
        retired = 0
        for worker_id in sorted(self.known_workers() - self.active_workers()):
            keys_, args = retire.retire_call(self.space, worker_id, grace_s)
            retired += int(self._retire(keys=keys_, args=args))
        return retired

    def limits(self, worker_id: str | None = None) -> RedisLimits:
        return RedisLimits(self.redis, worker_id, space=self.space)

    # -- dead letters -----------------------------------------------------------------------------
    def retry_dead_letters(self, entries: Sequence[dict[str, Any]]) -> int:
        pairs = deadletters.retry_pairs(entries)
        if not pairs:
            return 0
        keys_, args = deadletters.retry_call(self.space, pairs)
        return int(self._dlq_retry(keys=keys_, args=args))

    def purge_dead_letters(self, entries: Sequence[dict[str, Any]] | None = None) -> int:
        raws = [] if entries is None else [entry["raw"] for entry in entries]
        if entries is not None and not raws:
            return 0
        keys_, args = deadletters.purge_call(self.space, raws)
        return int(self._dlq_purge(keys=keys_, args=args))
