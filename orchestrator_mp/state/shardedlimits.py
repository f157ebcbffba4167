"""Rate limits and concurrency caps over a sharded layout.

A task is admitted in the shard it lives in (the ADMIT script needs its in-flight
list and the limit in one slot). The orchestrator and ``enqueue`` give tasks of a
limited type their limit as a shard key, so all of them live in one shard, which then
enforces the whole limit.
"""
from __future__ import annotations

from typing import Any, Callable

import attrs

from ..limits import Admission, ConcurrencyCap, Limiter, RedisLimits
from ..log import logger
from ..models import shard_key_of
from .shards import shard_of_task

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


__all__ = ["ShardedLimits"]
