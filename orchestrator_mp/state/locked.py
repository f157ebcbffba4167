"""RedisEnabledStateManager: the lock-based design the lock-free one replaces, done well.

It is the baseline of the benchmarks, so it is written as a careful engineer would
have written it, not as a straw man:

* Shared structures, as the old design had them: every worker's state is one JSON
  value in the ``worker_states`` hash; counters are read, changed and written back.
* Every read-modify-write runs under redis-py's own ``Lock`` (subclassed only to
  take a fencing token in the same round trip, see :mod:`.locks`), with a lease far
  longer than the critical section, and writes that the fence refuses once the
  lease is lost. A critical section's writes land in one atomic call or not at all,
  and once: a call resent after a lost reply is recognised.
* Tuned waiting: exponential backoff with jitter from 0.5 ms (``wait_policy="default"``
  selects redis-py's fixed 100 ms sleep, for comparison).
* Lock granularity like the lock-free design's partitions: one lock per worker
  partition, one work-queue lock around every change at the queue's near end (claims,
  hand-backs, requeues, promotions of due tasks, cancellations), one lock for the
  global counters, which also guards the dead-letter list (every writer of it changes
  counters). ``lock_scope="global"`` takes a single lock for everything instead.
* Reads take no lock (they need none); they are the lock-free manager's own
  (:mod:`.redisreads`), and so is the MULTI/EXEC audit snapshot: every critical
  section lands in one atomic call, so a snapshot never sees half of one.
* What each step decides (counting once, retries, poison, fencing, stored results)
  is computed by each step's Python twin (:mod:`.steps`), beside its Lua script.
* ``acquire_lock(name)`` is a real lock here: the old design held it around calls
  to rate-limited external services. Rate limits and concurrency caps of tasks are
  not supported (``limits()`` is None): such tasks fail with a clear message.

Data flow of one batch (R = round trips; every lock is acquire + release)::

    claim   lock worker:{w}, lock queue ─ read state, due tasks, LLEN, LRANGE ─
            FENCED_APPLY (ZREM/LPUSH due, LTRIM queue, LPUSH in-flight, state busy,
            XADD event) ─ release both                                           R=6
    settle  lock worker:{w}, lock counters ─ read state, in-flight, counters ─
            FENCED_APPLY (LREM, SET counters, XADD completions/errors, dead letters
            or retries, results, state idle, XADD event) ─ release both          R=6
    beat    lock worker:{w} ─ read state ─ FENCED_APPLY (lease, last_activity)   R=4

Lock order is always worker < queue < counters, so no two operations deadlock.
Appends at the queue's far end (submit, dead-letter retries) and to the delayed set
need no queue lock: they never race a claim, which reads and trims the near end.
A refused (fenced) write is counted in ``total_fenced`` by a second, short critical
section on the counters lock after the first one's locks are released.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable, Sequence, cast

import redis

from .. import keys
from ..connection import create_client, is_cluster, translate_connection_errors
from ..exceptions import ConfigurationError, LockTimeout
from ..models import Outcome, new_task_id
from ..wire import dumps
from .base import Capability, ReclaimResult, SettleResult
from .locks import (
    FENCED_APPLY,
    WAIT_POLICIES,
    WRITE_ARGS_MAX,
    FencedLock,
    LockStats,
    Write,
    acquire,
    fenced_args,
    release,
)
from .mirrored import MirroredStateManager
from .redisreads import RedisReadsMixin
from .steps import claim, deadletters, ops, reclaim, settle, submit, workers
from .steps import release as release_step
from .steps.ops import R, Step, Tally

LOCK_SCOPES = ("partition", "global")
# A critical section whose lease ran out is retried (nothing was written) this often.
LEASE_ATTEMPTS = 3
_PROMOTE_LIMIT = 1000
# Idle polling of the queue by wait_claim: there is no BLMOVE under a queue lock.
_POLL_FIRST_S = 0.0005
_POLL_CAP_S = 0.02


def _decode_state(raw: str | None) -> dict[str, str]:
    state: dict[str, str] = json.loads(raw) if raw else {}
    return state


def _xadd(stream: str, maxlen: int, fields: dict[str, object]) -> Write:
    flat: list[object] = []
    for name, value in fields.items():
        flat.extend((name, value))
    return ("XADD", stream, "MAXLEN", "~", maxlen, "*", *flat)


def _chunked(command: str, key: str, values: Sequence[object]) -> list[Write]:
    """One variadic write as several of at most WRITE_ARGS_MAX values each: FENCED_APPLY
    refuses a larger one (its Lua cannot unpack ~8,000 values), before writing anything."""
    return [(command, key, *values[start : start + WRITE_ARGS_MAX]) for start in range(0, len(values), WRITE_ARGS_MAX)]


def _seconds(clock: tuple[int, int]) -> float:
    """A TIME reply as epoch seconds: the server's clock is the one every process shares."""
    return clock[0] + clock[1] / 1e6


def _tally(counter_keys: Sequence[str], values: Sequence[str | None]) -> Tally:
    """Counters read in the critical section (touching any other one is a bug: KeyError)."""
    return Tally(dict(zip(counter_keys, (int(v or 0) for v in values), strict=True)).__getitem__)


@translate_connection_errors
class RedisEnabledStateManager(RedisReadsMixin, MirroredStateManager):
    """The lock-based baseline on one Redis server.

    Args:
        url: where the server is (``unix://``, ``redis://``, ``rediss://``).
        lock_scope: ``partition`` (a lock per worker, queue and counters) or ``global``.
        wait_policy: ``tuned`` (backoff from 0.5 ms with jitter) or ``default``
            (redis-py's fixed 100 ms sleep).
        lease_s: each lock's expiry; far longer than any critical section.
        blocking_timeout_s: how long to wait for a lock before raising LockTimeout.
        record_lock_samples: keep every acquire's wait time (benchmarks).
        worker_lease_s: how long a worker's lease lasts without a heartbeat.
        result_ttl_s: how long a stored task result is kept.
        client_retries: let redis-py resend commands after a reconnect (workers: False).
        completions_maxlen / events_maxlen / client: as for the lock-free manager.
    """

    kind = "locked"

    def __init__(
        self,
        url: str | None = None,
        *,
        lock_scope: str = "partition",
        wait_policy: str = "tuned",
        lease_s: float = 2.0,
        blocking_timeout_s: float = 10.0,
        record_lock_samples: bool = False,
        completions_maxlen: int = 200_000,
        events_maxlen: int = 20_000,
        worker_lease_s: float = 3.0,
        result_ttl_s: float = 86_400.0,
        client_retries: bool = True,
        client: redis.Redis | None = None,
    ) -> None:
        if client is None and url is None:
            raise ConfigurationError("RedisEnabledStateManager needs a url or a client")
        if lock_scope not in LOCK_SCOPES:
            raise ConfigurationError(f"lock_scope must be one of {', '.join(LOCK_SCOPES)}, got {lock_scope!r}")
        if wait_policy not in WAIT_POLICIES:
            raise ConfigurationError(f"wait_policy must be one of {', '.join(WAIT_POLICIES)}, got {wait_policy!r}")
        if not blocking_timeout_s > lease_s > 0:
            raise ConfigurationError(
                f"need blocking_timeout_s > lease_s > 0, got {blocking_timeout_s!r} and {lease_s!r}"
            )
        super().__init__(
            completions_maxlen=completions_maxlen,
            events_maxlen=events_maxlen,
            worker_lease_s=worker_lease_s,
            result_ttl_s=result_ttl_s,
        )
        self.url = url
        # cast: url is not None when client is (checked above)
        connected = client if client is not None else create_client(cast(str, url), retries=client_retries)
        if is_cluster(connected):
            raise ConfigurationError(
                "the lock-based baseline (--state locked) runs on one Redis server; a cluster needs the lock-free state"
            )
        self.redis = connected
        self.lock_scope = lock_scope
        self.policy = WAIT_POLICIES[wait_policy]
        self.lease_s = lease_s
        self.blocking_timeout_s = blocking_timeout_s
        self.stats = LockStats(record_samples=record_lock_samples)
        self._apply = self.redis.register_script(FENCED_APPLY)
        self._external: dict[str, FencedLock] = {}
        self._writers: dict[str, Callable[..., list[Write]]] = {
            ops.STREAM: lambda w, stream, fields: [_xadd(stream, self.maxlen(stream), fields)],
            ops.DEAD_LETTER: lambda w, entry: [("LPUSH", keys.DEAD_LETTER, entry)],
            ops.DELAY: lambda w, due, raw: [("ZADD", keys.DELAYED, due, raw)],
            ops.RESULT: self._result_writes,
            ops.REQUEUE: lambda w, raw: [("RPUSH", keys.QUEUE, raw)],
            ops.UNCLAIM: lambda w, raw: [("LREM", keys.worker_inflight_key(w), -1, raw)],
            ops.LEASE: self._lease_writes,
            ops.MEMBERSHIP: self._membership_writes,
            ops.ENQUEUE: lambda w, raws: _chunked("LPUSH", keys.QUEUE, raws),
            ops.SUBMITTED: lambda w, batch_id: [
                ("SET", keys.submit_marker_key(batch_id), 1, "EX", self.submit_marker_ttl_s)
            ],
            ops.PROMOTE_DUE: lambda w, due: [*_chunked("ZREM", keys.DELAYED, due), *_chunked("LPUSH", keys.QUEUE, due)],
            ops.TAKE: lambda w, raws: [
                ("LTRIM", keys.QUEUE, 0, -(len(raws) + 1)),
                *_chunked("LPUSH", keys.worker_inflight_key(w), raws),
            ],
            ops.DROP_INFLIGHT: lambda w: [("DEL", keys.worker_inflight_key(w))],
            ops.WITHDRAW: lambda w, raw: [("LREM", keys.QUEUE, 1, raw)],
            ops.UNLETTER: lambda w, entry: [("LREM", keys.DEAD_LETTER, 1, entry)],
            ops.UNLETTER_ALL: lambda w: [("DEL", keys.DEAD_LETTER)],
        }

    capabilities = frozenset({Capability.REDIS_STREAMS})

    def lock_stats(self) -> dict[str, Any]:
        return self.stats.as_dict()

    def close(self) -> None:
        for lock in self._external.values():
            release(lock)
        self._external.clear()
        self.redis.close()

    # -- critical sections ------------------------------------------------------------------
    def _lock(self, name: str) -> FencedLock:
        return FencedLock(self.redis, name, lease_s=self.lease_s, blocking_timeout_s=self.blocking_timeout_s)

    def _transact(self, lock_names: Sequence[str], plan: Callable[[], Step[R]]) -> R:
        """Hold the locks (in the given order), run ``plan`` (reads, decisions), apply its
        writes fenced, release; then count a refused write and return or raise. A lost
        lease means nothing was written: start over."""
        if self.lock_scope == "global":
            lock_names = [keys.GLOBAL_LOCK]
        for _ in range(LEASE_ATTEMPTS):
            held: list[FencedLock] = []
            try:
                for name in lock_names:
                    lock = self._lock(name)
                    acquire(lock, self.policy, self.stats)
                    held.append(lock)
                step = plan()
                writes = self._writes(step)
                if not writes or self._do_apply(held, writes):
                    break
            finally:
                for lock in reversed(held):
                    release(lock)
            self.stats.lost_leases += 1
        else:
            raise LockTimeout(", ".join(lock_names), 0.0, f"lost the lease before writing {LEASE_ATTEMPTS} times")
        if step.fenced:
            self.increment_counter(keys.TOTAL_FENCED, step.fenced)
        if step.error is not None:
            raise step.error
        return cast(R, step.result)  # no error: the planner set the result (None only where R allows it)

    def _do_apply(self, held: Sequence[FencedLock], writes: Sequence[Write]) -> bool:
        key_list, args = fenced_args(held, writes)
        return bool(self._apply(keys=key_list, args=args))

    def _writes(self, step: Step[Any]) -> list[Write]:
        """The Redis writes of a planned step, in order."""
        writes = [write for kind, *args in step.ops for write in self._writers[kind](step.worker_id, *args)]
        if step.state is not None:
            writes.append(("HSET", keys.WORKER_STATES, step.worker_id, dumps(step.state)))
        writes.extend(("SET", key, value) for key, value in step.changed_counters.items())
        return writes

    def _result_writes(self, _worker_id: str, task_id: str, stored: str) -> list[Write]:
        key = keys.result_key(task_id)
        return [("DEL", key), ("RPUSH", key, stored), ("PEXPIRE", key, self.result_ttl_ms)]

    def _lease_writes(self, worker_id: str, epoch: int | None) -> list[Write]:
        key = keys.worker_lease_key(worker_id)
        return [("DEL", key)] if epoch is None else [("SET", key, epoch, "PX", self.worker_lease_ms)]

    def _membership_writes(self, worker_id: str, active: bool) -> list[Write]:
        if not active:
            return [("SREM", keys.ACTIVE_WORKERS, worker_id)]
        return [("SADD", keys.ACTIVE_WORKERS, worker_id), ("SADD", keys.KNOWN_WORKERS, worker_id)]

    def _read_state(self, worker_id: str) -> dict[str, str]:
        return _decode_state(cast("str | None", self.redis.hget(keys.WORKER_STATES, worker_id)))

    def _read_state_and_clock(self, worker_id: str) -> tuple[dict[str, str], float]:
        """The worker's state and the server's clock, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(keys.WORKER_STATES, worker_id)
        pipe.time()
        raw_state, clock = pipe.execute()
        return _decode_state(raw_state), _seconds(clock)

    def _read_partition(self, worker_id: str, counter_keys: Sequence[str] = ()) -> tuple[Any, ...]:
        """State, in-flight list (oldest claim first), lease, counters and the server's
        clock, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(keys.WORKER_STATES, worker_id)
        pipe.lrange(keys.worker_inflight_key(worker_id), 0, -1)
        pipe.exists(keys.worker_lease_key(worker_id))
        pipe.time()
        if counter_keys:
            pipe.mget(counter_keys)
        raw_state, inflight, lease, clock, *values = pipe.execute()
        tally = _tally(counter_keys, values[0] if values else [])
        return _decode_state(raw_state), list(reversed(inflight)), tally, bool(lease), _seconds(clock)

    # -- workers --------------------------------------------------------------------------
    def register_worker(self, worker_id: str, *, pid: int, host: str) -> int:
        def plan() -> Step[int]:
            state, now = self._read_state_and_clock(worker_id)
            return workers.plan_register(worker_id, state, pid=pid, host=host, now=now)

        return self._transact([keys.worker_lock_key(worker_id)], plan)

    def heartbeat(self, worker_id: str, epoch: int) -> None:
        def plan() -> Step[None]:
            state, now = self._read_state_and_clock(worker_id)
            return workers.plan_heartbeat(worker_id, state, epoch, now)

        self._transact([keys.worker_lock_key(worker_id)], plan)

    def deregister_worker(self, worker_id: str, epoch: int) -> None:
        def plan() -> Step[None]:
            state, now = self._read_state_and_clock(worker_id)
            return workers.plan_deregister(worker_id, state, epoch, now)

        self._transact([keys.worker_lock_key(worker_id)], plan)

    def clock(self) -> float:
        return _seconds(self.redis.time())

    def start_task(self, worker_id: str, epoch: int, task_id: str, time_limit_s: float) -> float:
        def plan() -> Step[float]:
            state, now = self._read_state_and_clock(worker_id)
            return workers.plan_start_task(worker_id, state, epoch, task_id, now + float(time_limit_s))

        return self._transact([keys.worker_lock_key(worker_id)], plan)

    def get_worker_state(self, worker_id: str) -> dict[str, str]:
        return self._read_state(worker_id)

    def batch_get_worker_states(self, worker_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        ids = list(worker_ids)
        if not ids:
            return {}
        values = cast("list[str | None]", self.redis.hmget(keys.WORKER_STATES, ids))
        return {worker_id: _decode_state(raw) for worker_id, raw in zip(ids, values, strict=True)}

    def _do_update_state(
        self, worker_id: str, fields: dict[str, str], expected_version: int | None, epoch: int | None
    ) -> int:
        return self._transact(
            [keys.worker_lock_key(worker_id)],
            lambda: workers.plan_update(worker_id, self._read_state(worker_id), fields, expected_version, epoch),
        )

    # -- counters -------------------------------------------------------------------------
    def increment_counter(self, name: str, amount: int = 1, *, pipeline: Any = None) -> int:
        """Read, add, write back under the counters lock (at once, even with ``pipeline``)."""
        key = keys.counter_key(name)

        value = self._transact(
            [keys.COUNTERS_LOCK],
            lambda: ops.plan_increment(key, amount, Tally(lambda _key: int(self.redis.get(key) or 0))),
        )
        return 0 if pipeline is not None else value

    # -- rate-limited external services -------------------------------------------------------
    def acquire_lock(
        self, name: str = "external", timeout: float | None = None, blocking_timeout: float | None = None
    ) -> bool:
        """Hold the lock around a call to the rate-limited service ``name``.

        ``timeout`` is the lease (default: the manager's), ``blocking_timeout`` how long
        to wait. Returns False when the lock stayed taken; True once it is held.
        """
        lock = FencedLock(
            self.redis,
            keys.external_lock_key(name),
            lease_s=timeout or self.lease_s,
            blocking_timeout_s=self.blocking_timeout_s if blocking_timeout is None else blocking_timeout,
        )
        try:
            acquire(lock, self.policy, self.stats)
        except LockTimeout:
            return False
        self._external[name] = lock
        return True

    def release_lock(self, name: str = "external") -> None:
        lock = self._external.pop(name, None)
        if lock is not None:
            release(lock)

    # -- the queue ------------------------------------------------------------------------
    def submit(
        self,
        raw_tasks: Sequence[str],
        batch_id: str | None = None,
        due_at: float | None = None,
        *,
        delay_s: float | None = None,
    ) -> int:
        """Under the counters lock only (it also guards the batch markers): LPUSH at the
        far end, or ZADD to the delayed set, never races a claim."""
        submit.due_spec(due_at, delay_s)
        if not raw_tasks:
            return 0
        self.refuse_partition_keys(raw_tasks)
        batch_id = batch_id or new_task_id()
        marker = keys.submit_marker_key(batch_id)

        def plan() -> Step[int]:
            pipe = self.redis.pipeline(transaction=False)
            pipe.exists(marker)
            pipe.get(keys.TOTAL_WORK_CREATED)
            pipe.time()
            seen, created, clock = pipe.execute()
            tally = _tally([keys.TOTAL_WORK_CREATED], [created])
            due = submit.due_time(due_at, delay_s, _seconds(clock))
            return submit.plan_submit(raw_tasks, seen=bool(seen), batch_id=batch_id, due_at=due, tally=tally)

        return self._transact([keys.COUNTERS_LOCK], plan)

    def promote_due(self, limit: int = 1000) -> int:
        """A lock-free look first (the supervisor calls this ten times a second): the
        queue lock is taken only when something is due."""
        if not self._due_now():
            return 0
        return self._transact(
            [keys.QUEUE_LOCK],
            lambda: submit.plan_promote(
                cast("list[str]", self.redis.zrangebyscore(keys.DELAYED, "-inf", self.clock(), 0, limit))
            ),
        )

    def _due_now(self) -> bool:
        """Whether the soonest delayed task is due on the server's clock (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(keys.DELAYED, 0, 0, withscores=True)
        pipe.time()
        soonest, clock = pipe.execute()
        return bool(soonest) and soonest[0][1] <= _seconds(clock)

    def claim(self, worker_id: str, epoch: int, max_count: int, divisor: int = 1) -> list[str]:
        claim.checked_claim_count(max_count)

        def plan() -> Step[list[str]]:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hget(keys.WORKER_STATES, worker_id)
            pipe.zrange(keys.DELAYED, 0, _PROMOTE_LIMIT - 1, withscores=True)
            pipe.time()
            pipe.llen(keys.QUEUE)
            pipe.lrange(keys.QUEUE, -max(1, max_count), -1)
            raw_state, soonest, clock, depth, tail = pipe.execute()
            now = _seconds(clock)
            due = [raw for raw, score in soonest if score <= now]
            return claim.plan_claim(
                worker_id, epoch, _decode_state(raw_state), depth=int(depth), oldest=list(reversed(tail)),
                due=due, max_count=max_count, divisor=divisor, now=now,
            )

        return self._transact([keys.worker_lock_key(worker_id), keys.QUEUE_LOCK], plan)

    def wait_claim(self, worker_id: str, epoch: int, max_count: int, divisor: int, timeout_s: float) -> list[str]:
        """Claim, then poll (no lock) with backoff until a task is queued or a delayed one
        is due: nothing may block on the queue while another holder trims it under its lock."""
        deadline = time.monotonic() + timeout_s
        delay = _POLL_FIRST_S
        while True:
            claimed = self.claim(worker_id, epoch, max_count, divisor)
            if claimed:
                return claimed
            while True:
                if self.redis.llen(keys.QUEUE) or self._due_now():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                time.sleep(min(left, delay))
                delay = min(_POLL_CAP_S, delay * 2)

    def settle(self, worker_id: str, epoch: int, outcomes: Sequence[Outcome]) -> SettleResult:
        if not outcomes:
            return SettleResult(0, 0, 0)

        def plan() -> Step[SettleResult]:
            state, inflight, tally, _, now = self._read_partition(worker_id, settle.settle_counters(worker_id))
            return settle.plan_settle(worker_id, epoch, state, inflight, outcomes, tally, now)

        return self._transact([keys.worker_lock_key(worker_id), keys.COUNTERS_LOCK], plan)

    def cancel_queued(self, raw_task: str) -> bool:
        def plan() -> Step[bool]:
            pipe = self.redis.pipeline(transaction=False)
            pipe.lpos(keys.QUEUE, raw_task)
            pipe.get(keys.TOTAL_CANCELLED)
            position, cancelled = pipe.execute()
            return submit.plan_cancel(raw_task, position is not None, _tally([keys.TOTAL_CANCELLED], [cancelled]))

        return self._transact([keys.QUEUE_LOCK, keys.COUNTERS_LOCK], plan)

    def release(self, worker_id: str, epoch: int, raw_tasks: Sequence[str]) -> int:
        if not raw_tasks:
            return 0

        def plan() -> Step[int]:
            state, inflight, _, _, _ = self._read_partition(worker_id)
            return release_step.plan_release(worker_id, epoch, state, inflight, raw_tasks)

        return self._transact([keys.worker_lock_key(worker_id), keys.QUEUE_LOCK], plan)

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
        def plan() -> Step[ReclaimResult | None]:
            state, inflight, tally, lease, now = self._read_partition(worker_id, reclaim.reclaim_counters(worker_id))
            return reclaim.plan_reclaim(
                worker_id, state, inflight, tally, lease_alive=lease, max_crashes=max_crashes, reason=reason,
                crashed=crashed, only_if_expired=only_if_expired, cause=cause, now=now, deadline_of=deadline_of,
            )

        return self._transact([keys.worker_lock_key(worker_id), keys.QUEUE_LOCK, keys.COUNTERS_LOCK], plan)

    # -- dead letters ---------------------------------------------------------------------------
    def _dead_letter_step(self, counter_keys: list[str], make: Callable[[list[str], Tally], Step[int]]) -> int:
        def plan() -> Step[int]:
            pipe = self.redis.pipeline(transaction=False)
            pipe.lrange(keys.DEAD_LETTER, 0, -1)
            pipe.mget(counter_keys)
            stored, values = pipe.execute()
            return make(stored, _tally(counter_keys, values))

        return self._transact([keys.COUNTERS_LOCK], plan)

    def retry_dead_letters(self, entries: Sequence[dict[str, Any]]) -> int:
        pairs = deadletters.retry_pairs(entries)
        if not pairs:
            return 0
        return self._dead_letter_step(
            [keys.TOTAL_WORK_CREATED, keys.TOTAL_DLQ_RETRIED],
            lambda stored, tally: deadletters.plan_dlq_retry(stored, pairs, tally),
        )

    def purge_dead_letters(self, entries: Sequence[dict[str, Any]] | None = None) -> int:
        raws = None if entries is None else [entry["raw"] for entry in entries]
        if raws is not None and not raws:
            return 0
        return self._dead_letter_step(
            [keys.TOTAL_DLQ_PURGED], lambda stored, tally: deadletters.plan_dlq_purge(stored, raws, tally)
        )
