"""Lock-free global rate limits and concurrency caps, shared by every worker on every host.

Each decision is one Lua script (no locks, no WATCH loops):

* A **rate limit** is GCRA (the generic cell rate algorithm) on one key holding the
  "theoretical arrival time": allowed calls are spaced ``period / count`` apart, with
  ``burst`` calls of slack. The server's clock decides, so hosts need not agree.
* A **concurrency cap** is a sorted set of holders; at most ``limit`` members.

For a task, the decision and its consequence are one step: a task over its rate is
moved from the worker's in-flight list to the delayed set, due exactly when it may
run; a task finding its cap full is parked in the cap's waiting list, and the release
of a slot moves the oldest waiter back to the front of the queue. Nothing polls or
busy-waits, and neither counts as an error (``total_deferred`` counts them). Slots held
by a worker that dies are freed by the same recovery path that requeues its tasks.

On a sharded layout (:class:`ShardedLimits`) a task is admitted in the shard it lives in.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Callable, cast

import attrs
import redis

from .. import keys
from ..connection import UNAVAILABLE, is_out_of_memory, translate_connection_errors
from ..exceptions import Fenced
from ..limits import ConcurrencyCap, Limiter
from ..log import logger
from ..wire import shard_key_of
from .shards import shard_of_task
from .steps import limits as steps

# How long code-level limit waits (``with limiter(...)``, ``with cap``) ride out an
# unreachable server before raising BackendUnavailable into the task.
OUTAGE_PATIENCE_S = 60.0


def _patiently(call: Callable[[], Any]) -> Any:
    """``call()``, retried with backoff while the server is unreachable (a restart, a
    failover) or full (maxmemory), for up to OUTAGE_PATIENCE_S: an outage is a pause,
    not a task failure."""
    delay, deadline = 0.02, time.monotonic() + OUTAGE_PATIENCE_S
    while True:
        try:
            return call()
        except redis.RedisError as exc:
            if not (isinstance(exc, UNAVAILABLE) or is_out_of_memory(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(1.0, delay * 2)


@attrs.frozen
class Admission:
    """What ADMIT decided for one task: run it, or it was moved (deferred or waiting)."""

    run: bool
    due_at: float | None = None  # epoch seconds, when deferred by a rate limit
    waiting: bool = False  # parked until a slot frees


@translate_connection_errors
class RedisLimits:
    """Limits over one Redis client (created in the process using it).

    A lost server raises BackendUnavailable, as the state managers do; every task step
    here is safe to resend (workers resend after reconnecting). The code-level waits
    (``wait_for_rate``, ``hold_slot``) ride out an outage of up to ``OUTAGE_PATIENCE_S``.

    Args:
        client: a redis-py client.
        worker_id: the worker these limits act for (slots are recorded in its partition).
        space: the keys of the layout (or shard) the limits live in.
    """

    slot_hold_s = 3600.0  # a code-level slot older than this is presumed abandoned

    def __init__(self, client: redis.Redis, worker_id: str | None = None, *, space: keys.KeySpace = keys.PLAIN) -> None:
        self.redis = client
        self.space = space
        self.worker_id = worker_id
        self.epoch: int | None = None  # the worker's, once fenced: code-level slots check it
        self._admit = client.register_script(steps.ADMIT)
        self._release = client.register_script(steps.RELEASE_SLOT)
        self._rate_only = client.register_script(steps.RATE_ONLY)
        self._take = client.register_script(steps.TAKE_SLOT)

    # -- tasks ---------------------------------------------------------------------------------
    def admit(
        self, worker_id: str, epoch: int, raw: str, task_id: str, rate: Limiter | None, cap: ConcurrencyCap | None
    ) -> Admission:
        """One atomic decision for a claimed task; raises Fenced."""
        reply = self._admit(
            keys=[
                self.space.worker_state_key(worker_id),
                self.space.worker_inflight_key(worker_id),
                self.space.DELAYED,
                self.space.rate_limit_key(rate.name if rate else "-"),
                self.space.slots_key(cap.name if cap else "-"),
                self.space.slot_waiters_key(cap.name if cap else "-"),
                self.space.worker_slots_key(worker_id),
                self.space.LIMITERS,
                self.space.TOTAL_DEFERRED,
                self.space.TOTAL_FENCED,
                self.space.rate_reservations_key(rate.name if rate else "-"),
            ],
            args=[
                epoch,
                raw,
                "" if rate is None else rate.rate.interval_ms,
                0 if rate is None else rate.rate.tolerance_ms,
                "" if cap is None else cap.limit,
                "" if cap is None else cap.name,
                self.holder(worker_id, task_id),
                task_id,
            ],
        )
        code = int(reply[0])
        if code == -1:
            raise Fenced(worker_id, epoch)
        if code == 0:
            return Admission(run=False, due_at=float(reply[1]) / 1000.0)
        if code == 3:
            return Admission(run=False)  # a resent call: the first one moved it
        return Admission(run=False, waiting=True) if code == 2 else Admission(run=True)

    def release(self, cap: ConcurrencyCap, worker_id: str, task_id: str) -> bool:
        """Free the slot a task held and wake the oldest waiter."""
        holder = self.holder(worker_id, task_id)
        return self._free(cap.name, holder, worker_id)

    def release_worker_slots(self, worker_id: str) -> int:
        """Free every slot a dead worker held (part of its takeover). Returns how many."""
        freed = 0
        for record in cast("set[str]", self.redis.smembers(self.space.worker_slots_key(worker_id))):
            name, _, holder = record.partition("|")
            freed += self._free(name, holder, worker_id)
        return freed

    def fence(self, epoch: int) -> None:
        """Take code-level slots only while ``epoch`` owns the worker's partition."""
        self.epoch = epoch

    @staticmethod
    def holder(worker_id: str, task_id: str) -> str:
        return f"{worker_id}|{task_id}"

    def _free(self, name: str, holder: str, worker_id: str) -> bool:
        return bool(
            self._release(
                keys=[
                    self.space.slots_key(name),
                    self.space.slot_waiters_key(name),
                    self.space.QUEUE,
                    self.space.worker_slots_key(worker_id),
                ],
                args=[holder, f"{name}|{holder}"],
            )
        )

    # -- any code in a worker ----------------------------------------------------------------------
    def wait_for_rate(self, limit: Limiter) -> float:
        """Sleep until ``limit`` allows one call, then take it; returns seconds waited
        (an outage is waited out too, up to OUTAGE_PATIENCE_S, then BackendUnavailable)."""
        waited = 0.0
        while True:
            wait_ms = float(
                _patiently(
                    lambda: self._rate_only(
                        keys=[self.space.rate_limit_key(limit.name)],
                        args=[limit.rate.interval_ms, limit.rate.tolerance_ms],
                    )
                )
            )
            if wait_ms <= 0:
                return waited
            time.sleep(wait_ms / 1000.0)
            waited += wait_ms / 1000.0

    def hold_slot(self, cap: ConcurrencyCap, poll_s: float = 0.01) -> str:
        """Block until a slot of ``cap`` is free, take it, return its holder id. Raises
        Fenced when this worker's partition was taken over meanwhile."""
        owner = self.worker_id or "code"
        holder = f"{owner}|{uuid.uuid4().hex}"
        delay = poll_s
        while True:
            taken = _patiently(
                lambda: self._take(
                    keys=[
                        self.space.slots_key(cap.name),
                        self.space.worker_slots_key(owner),
                        self.space.LIMITERS,
                        self.space.worker_state_key(owner),
                    ],
                    args=[cap.limit, holder, cap.name, self.slot_hold_s * 1000.0, "" if self.epoch is None else self.epoch],
                )
            )
            if taken == -1:
                raise Fenced(owner, self.epoch if self.epoch is not None else -1)
            if taken == 1:
                return holder
            time.sleep(delay)
            delay = min(0.25, delay * 2)

    def free_slot(self, cap: ConcurrencyCap, holder: str) -> None:
        self._free(cap.name, holder, self.worker_id or "code")

    # -- accounting ------------------------------------------------------------------------------
    def waiting(self) -> int:
        """Tasks parked in every cap's waiting list (waiting work, for drains and audits)."""
        names = sorted(self.redis.smembers(self.space.LIMITERS))
        if not names:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.llen(self.space.slot_waiters_key(name))
        return sum(int(n) for n in pipe.execute())


_warned: set[tuple[str, ...]] = set()  # limits already warned about in this process


@attrs.define
class ShardedLimits:
    """Limits over shards: a task is admitted in the shard it lives in. Tasks submitted
    with their limit's shard key (the orchestrator and ``enqueue`` set it from the
    registry) all live in one shard, which enforces the whole limit; any others are
    held to that shard's share: ``r/S`` of a rate and ``n/S`` (at least 1) of a cap.
    (A limiter shared by task types with different shard keys is kept per shard.)"""

    parts: list[RedisLimits]
    ring: Callable[[int], int]  # wakes idle workers when a freed slot lets a waiter go
    epoch_in: Callable[[str, int, int], int]  # (worker, epoch, shard) -> the worker's epoch there
    worker_id: str | None = None

    @property
    def redis(self) -> Any:
        return self.parts[0].redis

    def _share(
        self, raw: str, rate: Limiter | None, cap: ConcurrencyCap | None
    ) -> tuple[Limiter | None, ConcurrencyCap | None]:
        count = len(self.parts)
        if count == 1 or shard_key_of(raw) is not None:
            return rate, cap  # every task of this limit lives in this shard
        self._warn_once(rate, cap)
        if rate is not None:
            rate = attrs.evolve(rate, rate=attrs.evolve(rate.rate, period_s=rate.rate.period_s * count))
        if cap is not None:
            cap = attrs.evolve(cap, limit=max(1, cap.limit // count))
        return rate, cap

    def _warn_once(self, rate: Limiter | None, cap: ConcurrencyCap | None) -> None:
        names = tuple(limit.name for limit in (rate, cap) if limit is not None)
        if names and names not in _warned:
            _warned.add(names)
            logger.warning(
                "a task limited by {} came without its shard key (its submitter had not imported the task's "
                "module): held to this shard's share of the limit, so a cap may be exceeded across shards",
                ", ".join(names),
            )

    def admit(
        self, worker_id: str, epoch: int, raw: str, task_id: str, rate: Limiter | None, cap: ConcurrencyCap | None
    ) -> Admission:
        index = shard_of_task(raw, len(self.parts))
        own = self.epoch_in(worker_id, epoch, index)
        return self.parts[index].admit(worker_id, own, raw, task_id, *self._share(raw, rate, cap))

    def release(self, cap: ConcurrencyCap, worker_id: str, task_id: str) -> bool:
        # The slot is in the task's shard; the holder id names the task, not its shard.
        freed = any(part.release(cap, worker_id, task_id) for part in self.parts)
        self.ring(int(freed))
        return freed

    def release_worker_slots(self, worker_id: str) -> int:
        return self.ring(sum(part.release_worker_slots(worker_id) for part in self.parts))

    def fence(self, epoch: int) -> None:
        """Code-level slots live in shard 0: they check the worker's epoch there."""
        if self.worker_id is not None:
            self.parts[0].fence(self.epoch_in(self.worker_id, epoch, 0))

    def wait_for_rate(self, limit: Limiter) -> float:
        """Code-level limits are not tied to a task: they live whole in shard 0."""
        return self.parts[0].wait_for_rate(limit)

    def hold_slot(self, cap: ConcurrencyCap, poll_s: float = 0.01) -> str:
        return self.parts[0].hold_slot(cap, poll_s)

    def free_slot(self, cap: ConcurrencyCap, holder: str) -> None:
        self.parts[0].free_slot(cap, holder)

    def waiting(self) -> int:
        return sum(part.waiting() for part in self.parts)
