"""RedisEnabledStateManager: the lock-based design the lock-free one replaces, done well.

It is the baseline of the benchmarks, so it is written as a careful engineer would
have written it, not as a straw man:

* Shared structures, as the old design had them: every worker's state is one JSON
  value in the ``worker_states`` hash; counters are read, changed and written back.
* Every read-modify-write runs under redis-py's own ``Lock`` (subclassed only to
  take a fencing token in the same round trip, see :mod:`.locks`), with a lease far
  longer than the critical section, and writes that the fence refuses once the
  lease is lost. A critical section's writes land in one atomic call or not at all.
* Tuned waiting: exponential backoff with jitter from 0.5 ms (``wait_policy="default"``
  selects redis-py's fixed 100 ms sleep, for comparison).
* Lock granularity like the lock-free design's partitions: one lock per worker
  partition, one work-queue lock around claiming, one lock for the global counters.
  ``lock_scope="global"`` takes a single lock for everything instead.
* Reads of one key, and appends to streams, take no lock (they need none); they
  are the same as the lock-free manager's (:mod:`.redisreads`).
* ``acquire_lock(name)`` is a real lock here: the old design held it around calls
  to rate-limited external services.

Data flow of one batch (R = round trips; every lock is acquire + release)::

    claim   lock worker:{w}, lock queue  ─ read state, LLEN, LRANGE ─ FENCED_APPLY
            (LTRIM queue, LPUSH in-flight, state busy, XADD event) ─ release both  R=6
    settle  lock worker:{w}, lock counters ─ read state, in-flight, counters ─
            FENCED_APPLY (LREM, SET counters, XADD completions/errors, dead letters,
            state idle, XADD event) ─ release both                                R=6

Lock order is always worker < queue < counters, so no two operations deadlock.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable, Sequence

import attrs
import redis

from .. import keys
from ..connection import create_client
from ..exceptions import ConfigurationError, Fenced, LockTimeout
from ..models import Outcome, dumps
from . import common
from .base import ReclaimResult, SettleResult, StateManager
from .locks import (
    FENCED_APPLY,
    WAIT_POLICIES,
    FencedLock,
    LockStats,
    Write,
    acquire,
    fenced_args,
    release,
)
from .redisreads import RedisReadsMixin

LOCK_SCOPES = ("partition", "global")
# A critical section whose lease ran out is retried (nothing was written) this often.
LEASE_ATTEMPTS = 3
_SUBMIT_CHUNK = 1000
# Idle polling of the queue by wait_claim: there is no BLMOVE under a queue lock.
_POLL_FIRST_S = 0.0005
_POLL_CAP_S = 0.02


@attrs.frozen
class _Step:
    """What a critical section decided: writes to apply, then a result or an error."""

    writes: list[Write] = attrs.Factory(list)
    result: Any = None
    error: Exception | None = None


def _decode_state(raw: str | None) -> dict[str, str]:
    return json.loads(raw) if raw else {}


def _xadd(stream: str, maxlen: int, fields: dict[str, object]) -> Write:
    flat: list[object] = []
    for name, value in fields.items():
        flat.extend((name, value))
    return ("XADD", stream, "MAXLEN", "~", maxlen, "*", *flat)


class RedisEnabledStateManager(RedisReadsMixin, StateManager):
    """The lock-based baseline on one Redis server.

    Args:
        url: where the server is (``unix://``, ``redis://``, ``rediss://``).
        lock_scope: ``partition`` (a lock per worker, queue and counters) or ``global``.
        wait_policy: ``tuned`` (backoff from 0.5 ms with jitter) or ``default``
            (redis-py's fixed 100 ms sleep).
        lease_s: each lock's expiry; far longer than any critical section.
        blocking_timeout_s: how long to wait for a lock before raising LockTimeout.
        record_lock_samples: keep every acquire's wait time (benchmarks).
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
        self.url = url
        self.redis = client if client is not None else create_client(url)
        self.lock_scope = lock_scope
        self.policy = WAIT_POLICIES[wait_policy]
        self.lease_s = lease_s
        self.blocking_timeout_s = blocking_timeout_s
        self.completions_maxlen = completions_maxlen
        self.events_maxlen = events_maxlen
        self.stats = LockStats(record_samples=record_lock_samples)
        self._apply = self.redis.register_script(FENCED_APPLY)
        self._external: dict[str, FencedLock] = {}

    def close(self) -> None:
        for lock in self._external.values():
            release(lock)
        self._external.clear()
        self.redis.close()

    # -- critical sections ------------------------------------------------------------------
    def _lock(self, name: str) -> FencedLock:
        return FencedLock(self.redis, name, lease_s=self.lease_s, blocking_timeout_s=self.blocking_timeout_s)

    def _transact(self, lock_names: Sequence[str], plan: Callable[[], _Step]) -> Any:
        """Hold the locks (in the given order), run ``plan`` (reads, decisions), apply its
        writes fenced, release. A lost lease means nothing was written: start over."""
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
                if not step.writes or self._do_apply(held, step.writes):
                    if step.error is not None:
                        raise step.error
                    return step.result
            finally:
                for lock in reversed(held):
                    release(lock)
            self.stats.lost_leases += 1
        raise LockTimeout(", ".join(lock_names), 0.0, f"lost the lease before writing {LEASE_ATTEMPTS} times")

    def _do_apply(self, held: Sequence[FencedLock], writes: Sequence[Write]) -> bool:
        key_list, args = fenced_args(held, writes)
        return bool(self._apply(keys=key_list, args=args))

    def _read_state(self, worker_id: str) -> dict[str, str]:
        return _decode_state(self.redis.hget(keys.WORKER_STATES, worker_id))

    def _state_write(self, worker_id: str, state: dict[str, str]) -> Write:
        return ("HSET", keys.WORKER_STATES, worker_id, dumps(state))

    def _event(self, fields: dict[str, object]) -> Write:
        return _xadd(keys.EVENTS, self.events_maxlen, fields)

    # -- workers --------------------------------------------------------------------------
    def register_worker(self, worker_id: str, *, pid: int, host: str) -> int:
        def plan() -> _Step:
            state = self._read_state(worker_id)
            now = common.encode_value(time.time())
            epoch = int(state.get("epoch", 0)) + 1
            version = int(state.get("version", 0)) + 1
            state.update(
                epoch=str(epoch), version=str(version), status="idle", current_task="",
                pid=common.encode_value(pid), host=host, started_at=now, last_activity=now,
            )
            writes = [
                self._state_write(worker_id, state),
                ("SADD", keys.ACTIVE_WORKERS, worker_id),
                ("SADD", keys.KNOWN_WORKERS, worker_id),
                _xadd(keys.WORKER_EVENTS, self.events_maxlen,
                      {"event": "registered", "worker": worker_id, "pid": pid, "host": host, "epoch": epoch}),
                self._event({"event": "state", "worker": worker_id, "status": "idle", "version": version}),
            ]
            return _Step(writes, epoch)

        return self._transact([keys.worker_lock_key(worker_id)], plan)

    def deregister_worker(self, worker_id: str, epoch: int) -> None:
        def plan() -> _Step:
            state = self._read_state(worker_id)
            if state.get("epoch") != str(epoch):
                return _Step(error=Fenced(worker_id, epoch))
            version = int(state.get("version", 0)) + 1
            state.update(version=str(version), status="stopped", current_task="",
                         last_activity=common.encode_value(time.time()))
            writes = [
                self._state_write(worker_id, state),
                ("SREM", keys.ACTIVE_WORKERS, worker_id),
                _xadd(keys.WORKER_EVENTS, self.events_maxlen,
                      {"event": "deregistered", "worker": worker_id, "epoch": epoch}),
                self._event({"event": "state", "worker": worker_id, "status": "stopped", "version": version}),
            ]
            return _Step(writes)

        self._transact([keys.worker_lock_key(worker_id)], plan)

    def get_worker_state(self, worker_id: str) -> dict[str, str]:
        return self._read_state(worker_id)

    def batch_get_worker_states(self, worker_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        ids = list(worker_ids)
        if not ids:
            return {}
        values = self.redis.hmget(keys.WORKER_STATES, ids)
        return {worker_id: _decode_state(raw) for worker_id, raw in zip(ids, values, strict=True)}

    def update_worker_field(
        self, worker_id: str, field: str, value: object, *, epoch: int | None = None, pipeline: Any = None
    ) -> int:
        """As the contract says; with ``pipeline`` the update is made at once, under its
        lock (a locked read-modify-write cannot wait in a caller's pipeline)."""
        version = self._do_update_state(worker_id, {field: value}, None, epoch)
        return 0 if pipeline is not None else version

    def update_worker_state(
        self,
        worker_id: str,
        mapping: dict[str, object],
        expected_version: int | None = None,
        *,
        epoch: int | None = None,
    ) -> bool:
        return self._do_update_state(worker_id, mapping, expected_version, epoch) != 0

    def _do_update_state(
        self, worker_id: str, mapping: dict[str, object], expected_version: int | None, epoch: int | None
    ) -> int:
        fields = common.checked_fields(mapping)

        def plan() -> _Step:
            state = self._read_state(worker_id)
            if epoch is not None and state.get("epoch") != str(epoch):
                return _Step(error=Fenced(worker_id, epoch))
            if expected_version is not None and state.get("version", "0") != str(expected_version):
                return _Step(result=0)
            version = int(state.get("version", 0)) + 1
            state.update(fields)
            state["version"] = str(version)
            event = {"event": "state", "worker": worker_id, "version": version, **fields}
            return _Step([self._state_write(worker_id, state), self._event(event)], version)

        return self._transact([keys.worker_lock_key(worker_id)], plan)

    # -- counters, metrics ----------------------------------------------------------------
    def increment_counter(self, name: str, amount: int = 1, *, pipeline: Any = None) -> int:
        """Read, add, write back under the counters lock (at once, even with ``pipeline``)."""
        key = keys.counter_key(name)

        def plan() -> _Step:
            value = int(self.redis.get(key) or 0) + amount
            return _Step([("SET", key, value)], value)

        value = self._transact([keys.COUNTERS_LOCK], plan)
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
    def submit(self, raw_tasks: Sequence[str]) -> int:
        """Under the counters lock only: LPUSH at the far end never races a claim, which
        reads and trims the near end under the queue lock."""
        if not raw_tasks:
            return 0

        def plan() -> _Step:
            created = int(self.redis.get(keys.TOTAL_WORK_CREATED) or 0)
            writes: list[Write] = [
                ("LPUSH", keys.QUEUE, *raw_tasks[start : start + _SUBMIT_CHUNK])
                for start in range(0, len(raw_tasks), _SUBMIT_CHUNK)
            ]
            writes.append(("SET", keys.TOTAL_WORK_CREATED, created + len(raw_tasks)))
            return _Step(writes, len(raw_tasks))

        return self._transact([keys.COUNTERS_LOCK], plan)

    def claim(self, worker_id: str, epoch: int, max_count: int, divisor: int = 1) -> list[str]:
        def plan() -> _Step:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hget(keys.WORKER_STATES, worker_id)
            pipe.llen(keys.QUEUE)
            pipe.lrange(keys.QUEUE, -max(1, max_count), -1)
            raw_state, depth, tail = pipe.execute()
            state = _decode_state(raw_state)
            if state.get("epoch") != str(epoch):
                return _Step(error=Fenced(worker_id, epoch))
            want = common.fair_share(max_count, int(depth), divisor)
            if want == 0:
                return _Step(result=[])
            claimed = list(reversed(tail[-want:]))  # the queue's right end is its oldest
            version = int(state.get("version", 0)) + 1
            task_id = common.task_id_of(claimed[0], "?")
            state.update(version=str(version), status="busy", current_task=task_id, batch=str(want),
                         last_activity=common.encode_value(time.time()))
            writes = [
                ("LTRIM", keys.QUEUE, 0, -(want + 1)),
                ("LPUSH", keys.worker_inflight_key(worker_id), *claimed),
                self._state_write(worker_id, state),
                self._event({"event": "state", "worker": worker_id, "status": "busy", "current_task": task_id,
                             "batch": want, "version": version}),
            ]
            return _Step(writes, claimed)

        return self._transact([keys.worker_lock_key(worker_id), keys.QUEUE_LOCK], plan)

    def wait_claim(self, worker_id: str, epoch: int, max_count: int, divisor: int, timeout_s: float) -> list[str]:
        """Claim, then poll the queue's length (no lock) with backoff until a task appears:
        nothing may block on the queue while another holder trims it under its lock."""
        deadline = time.monotonic() + timeout_s
        delay = _POLL_FIRST_S
        while True:
            claimed = self.claim(worker_id, epoch, max_count, divisor)
            if claimed:
                return claimed
            while not self.redis.llen(keys.QUEUE):
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                time.sleep(min(left, delay))
                delay = min(_POLL_CAP_S, delay * 2)

    def settle(self, worker_id: str, epoch: int, outcomes: Sequence[Outcome]) -> SettleResult:
        if not outcomes:
            return SettleResult(0, 0, 0)
        counter_keys = [
            keys.worker_completed_key(worker_id),
            keys.worker_errors_key(worker_id),
            keys.TOTAL_WORK_COMPLETED,
            keys.TOTAL_ERRORS,
            keys.TOTAL_DEAD_LETTERED,
            keys.TOTAL_DUPLICATES,
            keys.TOTAL_FENCED,
        ]

        def plan() -> _Step:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hget(keys.WORKER_STATES, worker_id)
            pipe.lrange(keys.worker_inflight_key(worker_id), 0, -1)
            pipe.mget(counter_keys)
            raw_state, inflight, values = pipe.execute()
            count = dict(zip(counter_keys, (int(v or 0) for v in values), strict=True))
            state = _decode_state(raw_state)
            if state.get("epoch") != str(epoch):
                fenced = count[keys.TOTAL_FENCED] + len(outcomes)
                return _Step([("SET", keys.TOTAL_FENCED, fenced)], error=Fenced(worker_id, epoch))
            return self._plan_settle(worker_id, state, inflight, count, outcomes)

        return self._transact([keys.worker_lock_key(worker_id), keys.COUNTERS_LOCK], plan)

    def _plan_settle(
        self,
        worker_id: str,
        state: dict[str, str],
        inflight: list[str],
        count: dict[str, int],
        outcomes: Sequence[Outcome],
    ) -> _Step:
        inflight_key = keys.worker_inflight_key(worker_id)
        done, failed, duplicates = common.split_settled(inflight, outcomes)
        writes: list[Write] = []
        now = time.time()
        for outcome in done:
            count[keys.TOTAL_WORK_COMPLETED] += 1
            writes.append(("LREM", inflight_key, -1, outcome.raw))
            writes.append(_xadd(keys.WORK_COMPLETIONS, self.completions_maxlen, {
                "n": count[keys.TOTAL_WORK_COMPLETED], "task_id": outcome.task_id, "name": outcome.name,
                "worker": worker_id, "wait_ms": common.ms(outcome.wait_ms), "run_ms": common.ms(outcome.run_ms)}))
        for outcome in failed:
            count[keys.TOTAL_ERRORS] += 1
            count[keys.TOTAL_DEAD_LETTERED] += 1
            writes.append(("LREM", inflight_key, -1, outcome.raw))
            writes.append(_xadd(keys.WORK_ERRORS, self.completions_maxlen, {
                "n": count[keys.TOTAL_ERRORS], "task_id": outcome.task_id, "name": outcome.name,
                "worker": worker_id, "category": outcome.category, "message": outcome.message}))
            entry = common.dead_letter_entry(outcome.raw, outcome.task_id, outcome.name, outcome.category,
                                             outcome.message, outcome.traceback, worker_id, now)
            writes.append(("LPUSH", keys.DEAD_LETTER, entry))
        count[keys.worker_completed_key(worker_id)] += len(done)
        count[keys.worker_errors_key(worker_id)] += len(failed)
        count[keys.TOTAL_DUPLICATES] += duplicates
        changed = {
            keys.worker_completed_key(worker_id): bool(done),
            keys.TOTAL_WORK_COMPLETED: bool(done),
            keys.worker_errors_key(worker_id): bool(failed),
            keys.TOTAL_ERRORS: bool(failed),
            keys.TOTAL_DEAD_LETTERED: bool(failed),
            keys.TOTAL_DUPLICATES: bool(duplicates),
        }
        writes.extend(("SET", key, count[key]) for key, yes in changed.items() if yes)
        version = int(state.get("version", 0)) + 1
        state.update(version=str(version), status="idle", current_task="", batch="0",
                     last_activity=common.encode_value(now))
        writes.append(self._state_write(worker_id, state))
        writes.append(self._event({"event": "state", "worker": worker_id, "status": "idle", "completed": len(done),
                                   "failed": len(failed), "version": version}))
        return _Step(writes, SettleResult(len(done), len(failed), duplicates))

    def release(self, worker_id: str, epoch: int, raw_tasks: Sequence[str]) -> int:
        if not raw_tasks:
            return 0

        def plan() -> _Step:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hget(keys.WORKER_STATES, worker_id)
            pipe.lrange(keys.worker_inflight_key(worker_id), 0, -1)
            raw_state, inflight = pipe.execute()
            if _decode_state(raw_state).get("epoch") != str(epoch):
                return _Step(error=Fenced(worker_id, epoch))
            present, _failed, _missing = common.split_settled(
                inflight, [Outcome(raw=raw, task_id="", name="", ok=True) for raw in raw_tasks]
            )
            writes: list[Write] = []
            for outcome in present:
                writes.append(("LREM", keys.worker_inflight_key(worker_id), -1, outcome.raw))
                writes.append(("RPUSH", keys.QUEUE, outcome.raw))
            return _Step(writes, len(present))

        return self._transact([keys.worker_lock_key(worker_id), keys.QUEUE_LOCK], plan)

    def reclaim(self, worker_id: str, *, max_crashes: int, reason: str = "died") -> ReclaimResult:
        counter_keys = [keys.worker_errors_key(worker_id), keys.TOTAL_ERRORS, keys.TOTAL_DEAD_LETTERED,
                        keys.TOTAL_REQUEUED]

        def plan() -> _Step:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hget(keys.WORKER_STATES, worker_id)
            pipe.lrange(keys.worker_inflight_key(worker_id), 0, -1)
            pipe.mget(counter_keys)
            raw_state, inflight, values = pipe.execute()
            count = dict(zip(counter_keys, (int(v or 0) for v in values), strict=True))
            state = _decode_state(raw_state)
            epoch = int(state.get("epoch", 0)) + 1
            state.update(epoch=str(epoch), status="dead", current_task="", batch="0")
            writes: list[Write] = [self._state_write(worker_id, state)]
            requeued = dead = 0
            now = time.time()
            for raw in inflight:  # head first, as RECLAIM pops them: the oldest lands in front
                again, category, message = common.requeue_or_poison(raw, max_crashes)
                if again is not None:
                    writes.append(("RPUSH", keys.QUEUE, again))
                    requeued += 1
                    continue
                task_id, name = common.task_id_of(raw), common.name_of(raw)
                count[keys.worker_errors_key(worker_id)] += 1
                count[keys.TOTAL_ERRORS] += 1
                count[keys.TOTAL_DEAD_LETTERED] += 1
                writes.append(_xadd(keys.WORK_ERRORS, self.completions_maxlen, {
                    "n": count[keys.TOTAL_ERRORS], "task_id": task_id, "name": name, "worker": worker_id,
                    "category": category, "message": message}))
                writes.append(("LPUSH", keys.DEAD_LETTER, common.dead_letter_entry(
                    raw, task_id, name, category, message, "", worker_id, now)))
                dead += 1
            if inflight:
                writes.append(("DEL", keys.worker_inflight_key(worker_id)))
            count[keys.TOTAL_REQUEUED] += requeued
            writes.extend(("SET", key, value) for key, value in count.items() if requeued or dead)
            writes.append(("SREM", keys.ACTIVE_WORKERS, worker_id))
            writes.append(_xadd(keys.WORKER_EVENTS, self.events_maxlen, {
                "event": "reclaimed", "worker": worker_id, "reason": reason, "epoch": epoch,
                "requeued": requeued, "dead_lettered": dead}))
            return _Step(writes, ReclaimResult(epoch, requeued, dead))

        return self._transact(
            [keys.worker_lock_key(worker_id), keys.QUEUE_LOCK, keys.COUNTERS_LOCK], plan
        )
