"""RedisLockFreeStateManager: shared state through atomic Redis operations only.

Data flow of one task (K = batch size; one round trip per arrow pair)::

    submitter ──MULTI{LPUSH queue:pending ×n, INCRBY total_work_created n}──▶ queue
    worker w  ──CLAIM.lua (RPOP K → LPUSH worker:{w}:inflight, state busy)──▶ in-flight
              (queue empty: BLMOVE queue → in-flight blocks, then CLAIM.lua marks busy)
              ... runs the K tasks in-process ...
    worker w  ──SETTLE.lua (per task: LREM in-flight; INCR worker + total counter;
                XADD work_completions | work_errors + LPUSH dead-letter; state idle)──▶
    parent    ──RECLAIM.lua when w dies (epoch+1; in-flight → queue front)──▶ queue

No locks anywhere: each worker writes only its own partition (``worker:{w}:*``),
shared counters change by INCR, streams by XADD, and the queue by moves that keep
every task in exactly one list. Every step is one Lua script or one MULTI.

Round trips per task: 2/K in a deep queue (claim + settle per batch), 3 for a
task that arrives at an idle worker (BLMOVE, CLAIM, SETTLE).
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import redis

from .. import keys
from ..connection import create_client, translate_connection_errors
from ..exceptions import ConfigurationError, Fenced
from ..keys import SUBMIT_MARKER_TTL_S
from ..limits import RedisLimits
from ..models import Outcome, dumps, new_task_id, partition_key_of
from . import common, scripts
from .base import ReclaimResult, SettleResult, StateManager, dead_letter_entry
from .redisreads import RedisReadsMixin


class _Lanes:
    """Numbers the lanes one script call touches; their key pairs go into KEYS in order."""

    def __init__(self, space: keys.KeySpace) -> None:
        self.space = space
        self.keys: list[str] = []
        self._numbers: dict[str, int] = {}

    def number(self, partition_key: str) -> int:
        if partition_key not in self._numbers:
            self._numbers[partition_key] = len(self._numbers) + 1
            self.keys.extend((self.space.lane_key(partition_key), self.space.lane_owner_key(partition_key)))
        return self._numbers[partition_key]


@translate_connection_errors
class RedisLockFreeStateManager(RedisReadsMixin, StateManager):
    """Lock-free state on one Redis server (embedded or external).

    Args:
        url: where the server is (``unix://``, ``redis://``, ``rediss://``).
        completions_maxlen: approximate cap of ``work_completions`` / ``work_errors``.
        events_maxlen: approximate cap of the other streams.
        lease_s: how long a worker's lease lasts without a heartbeat.
        client_retries: let redis-py resend commands after a reconnect (workers: False).
        client: an existing client to use instead of building one from ``url``
            (it must have been created in this process).
        space: the keys it works on: the plain layout, or one shard of a sharded
            layout (see :class:`~orchestrator_mp.state.sharded.ShardedStateManager`).
    """

    kind = "lockfree"
    submit_marker_ttl_s = SUBMIT_MARKER_TTL_S

    def __init__(
        self,
        url: str | None = None,
        *,
        completions_maxlen: int = 200_000,
        events_maxlen: int = 20_000,
        lease_s: float = 3.0,
        result_ttl_s: float = 86_400.0,
        client_retries: bool = True,
        client: redis.Redis | None = None,
        space: keys.KeySpace = keys.PLAIN,
    ) -> None:
        if client is None and url is None:
            raise ConfigurationError("RedisLockFreeStateManager needs a url or a client")
        self.url = url
        self.space = space
        self.redis = client if client is not None else create_client(url, retries=client_retries)
        self.completions_maxlen = completions_maxlen
        self.events_maxlen = events_maxlen
        self.lease_ms = max(1, int(lease_s * 1000))
        self.result_ttl_ms = max(1, int(result_ttl_s * 1000))
        self._register = self.redis.register_script(scripts.REGISTER)
        self._heartbeat = self.redis.register_script(scripts.HEARTBEAT)
        self._promote = self.redis.register_script(scripts.PROMOTE)
        self._submit = self.redis.register_script(scripts.SUBMIT)
        self._dlq_retry = self.redis.register_script(scripts.DLQ_RETRY)
        self._dlq_purge = self.redis.register_script(scripts.DLQ_PURGE)
        self._task_status = self.redis.register_script(scripts.TASK_STATUS)
        self._cancel = self.redis.register_script(scripts.CANCEL)
        self._deregister = self.redis.register_script(scripts.DEREGISTER)
        self._update_state = self.redis.register_script(scripts.UPDATE_STATE)
        self._start_task = self.redis.register_script(scripts.START_TASK)
        self._claim = self.redis.register_script(scripts.CLAIM)
        self._settle = self.redis.register_script(scripts.SETTLE)
        self._release = self.redis.register_script(scripts.RELEASE)
        self._reclaim = self.redis.register_script(scripts.RECLAIM)
        self._retire = self.redis.register_script(scripts.RETIRE)

    def close(self) -> None:
        self.redis.close()

    # -- workers --------------------------------------------------------------------------
    def register_worker(self, worker_id: str, *, pid: int, host: str) -> int:
        epoch, _version = self._register(
            keys=[
                self.space.worker_state_key(worker_id),
                self.space.ACTIVE_WORKERS,
                self.space.KNOWN_WORKERS,
                self.space.WORKER_EVENTS,
                self.space.EVENTS,
                self.space.worker_lease_key(worker_id),
            ],
            args=[worker_id, pid, host, self.events_maxlen, self.lease_ms],
        )
        return int(epoch)

    def heartbeat(self, worker_id: str, epoch: int) -> None:
        result = self._heartbeat(
            keys=[self.space.worker_state_key(worker_id), self.space.worker_lease_key(worker_id), self.space.TOTAL_FENCED],
            args=[epoch, self.lease_ms],
        )
        if result == -1:
            raise Fenced(worker_id, epoch)

    def deregister_worker(self, worker_id: str, epoch: int) -> None:
        version = self._deregister(
            keys=[
                self.space.worker_state_key(worker_id),
                self.space.ACTIVE_WORKERS,
                self.space.WORKER_EVENTS,
                self.space.EVENTS,
                self.space.worker_lease_key(worker_id),
            ],
            args=[worker_id, epoch, self.events_maxlen],
        )
        if version == -1:
            raise Fenced(worker_id, epoch)

    def get_worker_state(self, worker_id: str) -> dict[str, str]:
        return self.redis.hgetall(self.space.worker_state_key(worker_id))

    def batch_get_worker_states(self, worker_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        ids = list(worker_ids)
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in ids:
            pipe.hgetall(self.space.worker_state_key(worker_id))
        return dict(zip(ids, pipe.execute(), strict=True))

    def update_worker_field(
        self, worker_id: str, field: str, value: object, *, epoch: int | None = None, pipeline: Any = None
    ) -> int:
        return self._do_update_state(worker_id, {field: value}, None, epoch, pipeline)

    def update_worker_state(
        self,
        worker_id: str,
        mapping: dict[str, object],
        expected_version: int | None = None,
        *,
        epoch: int | None = None,
    ) -> bool:
        return self._do_update_state(worker_id, mapping, expected_version, epoch, None) != 0

    def _do_update_state(
        self,
        worker_id: str,
        mapping: dict[str, object],
        expected_version: int | None,
        epoch: int | None,
        pipeline: Any,
    ) -> int:
        flat: list[object] = []
        for field, value in common.checked_fields(mapping).items():
            flat.extend((field, value))
        result = self._update_state(
            keys=[self.space.worker_state_key(worker_id), self.space.EVENTS, self.space.TOTAL_FENCED],
            args=[
                worker_id,
                "" if expected_version is None else expected_version,
                "" if epoch is None else epoch,
                self.events_maxlen,
                *flat,
            ],
            client=pipeline if pipeline is not None else self.redis,
        )
        if pipeline is not None:
            return 0
        if result == -1:
            raise Fenced(worker_id, epoch if epoch is not None else -1)
        return int(result)

    def start_task(self, worker_id: str, epoch: int, task_id: str, time_limit_s: float) -> float:
        deadline = self._start_task(
            keys=[self.space.worker_state_key(worker_id), self.space.EVENTS, self.space.TOTAL_FENCED],
            args=[worker_id, epoch, task_id, float(time_limit_s), self.events_maxlen],
        )
        if deadline == -1:
            raise Fenced(worker_id, epoch)
        return float(deadline)

    # -- counters, metrics ----------------------------------------------------------------
    def increment_counter(self, name: str, amount: int = 1, *, pipeline: Any = None) -> int:
        target = pipeline if pipeline is not None else self.redis
        result = target.incrby(self.space.counter_key(name), amount)
        return 0 if pipeline is not None else int(result)

    # -- the queue ------------------------------------------------------------------------
    def submit(
        self,
        raw_tasks: Sequence[str],
        batch_id: str | None = None,
        due_at: float | None = None,
        *,
        delay_s: float | None = None,
    ) -> int:
        if not raw_tasks:
            return 0
        when = common.due_spec(due_at, delay_s)
        batch_id = batch_id or new_task_id()
        lanes, keyed, plain = _Lanes(self.space), [], []
        for raw in raw_tasks:
            partition_key = partition_key_of(raw)
            if partition_key is None:
                plain.append(raw)
            else:
                keyed.extend((raw, lanes.number(partition_key)))
        return int(
            self._submit(
                keys=[
                    self.space.QUEUE,
                    self.space.TOTAL_WORK_CREATED,
                    self.space.submit_marker_key(batch_id),
                    self.space.DELAYED,
                    self.space.LANE_WAITING,
                    *lanes.keys,
                ],
                args=[self.submit_marker_ttl_s, when, len(keyed) // 2, *keyed, *plain],
            )
        )

    def promote_due(self, limit: int = 1000) -> int:
        return int(self._promote(keys=[self.space.DELAYED, self.space.QUEUE], args=[limit]))

    def claim(self, worker_id: str, epoch: int, max_count: int, divisor: int = 1) -> list[str]:
        common.checked_claim_count(max_count)
        return self._do_claim(worker_id, epoch, max_count, divisor, moved=0)

    def wait_claim(self, worker_id: str, epoch: int, max_count: int, divisor: int, timeout_s: float) -> list[str]:
        common.checked_claim_count(max_count)
        claimed = self._do_claim(worker_id, epoch, max_count, divisor, moved=0)
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
        # list, so it is never anywhere else. A worker fenced while blocked may still
        # land one here: the parent's sweep of dead partitions puts it back.
        first = self.redis.blmove(self.space.QUEUE, self.space.worker_inflight_key(worker_id), timeout_s, "RIGHT", "LEFT")
        if first is None:
            return []
        more = self._do_claim(worker_id, epoch, max_count - 1, divisor, moved=1)
        return [first, *more]

    def _do_claim(self, worker_id: str, epoch: int, max_count: int, divisor: int, moved: int) -> list[str]:
        result = self._claim(
            keys=[
                self.space.QUEUE,
                self.space.worker_inflight_key(worker_id),
                self.space.worker_state_key(worker_id),
                self.space.EVENTS,
                self.space.DELAYED,
                self.space.TOTAL_FENCED,
            ],
            args=[worker_id, epoch, max_count, max(1, divisor), self.events_maxlen, moved],
        )
        if result == -1:
            raise Fenced(worker_id, epoch)
        return result

    def settle(self, worker_id: str, epoch: int, outcomes: Sequence[Outcome]) -> SettleResult:
        if not outcomes:
            return SettleResult(0, 0, 0)
        now = time.time()
        result_keys: list[str] = []

        lanes = _Lanes(self.space)

        def result_slot(outcome: Outcome, final: bool) -> tuple[int, str]:
            if not (final and outcome.want_result and outcome.task_id):
                return 0, ""
            result_keys.append(self.space.result_key(outcome.task_id))
            return len(result_keys), outcome.stored_result(worker_id, now)

        def lane_slot(outcome: Outcome, final: bool) -> int:
            partition_key = partition_key_of(outcome.raw) if final else None
            return lanes.number(partition_key) if partition_key else 0

        done, failed = [], []
        for outcome in outcomes:
            if outcome.ok:
                index, stored = result_slot(outcome, True)
                done.append(
                    (
                        outcome.raw,
                        outcome.task_id,
                        outcome.name,
                        common.ms(outcome.wait_ms),
                        common.ms(outcome.run_ms),
                        index,
                        stored,
                        lane_slot(outcome, True),
                    )
                )
            else:
                final = not outcome.retry_raw
                index, stored = result_slot(outcome, final)
                failed.append(
                    (
                        outcome.raw,
                        outcome.task_id,
                        outcome.name,
                        outcome.category,
                        outcome.message,
                        dead_letter_entry(outcome, worker_id) if final else "",
                        outcome.retry_raw,
                        repr(outcome.retry_in_s),
                        index,
                        stored,
                        lane_slot(outcome, final),
                    )
                )
        args: list[object] = [
            worker_id,
            epoch,
            self.completions_maxlen,
            self.events_maxlen,
            len(done),
            len(failed),
            self.result_ttl_ms,
            dumps(done) if done else "[]",
            dumps(failed) if failed else "[]",
            len(result_keys),
        ]
        return self._do_settle(worker_id, epoch, [*result_keys, *lanes.keys], args)

    def _do_settle(self, worker_id: str, epoch: int, extra_keys: list[str], args: list[object]) -> SettleResult:
        result = self._settle(
            keys=[
                self.space.worker_state_key(worker_id),
                self.space.worker_inflight_key(worker_id),
                self.space.worker_completed_key(worker_id),
                self.space.worker_errors_key(worker_id),
                self.space.TOTAL_WORK_COMPLETED,
                self.space.TOTAL_ERRORS,
                self.space.TOTAL_DEAD_LETTERED,
                self.space.TOTAL_DUPLICATES,
                self.space.TOTAL_FENCED,
                self.space.WORK_COMPLETIONS,
                self.space.WORK_ERRORS,
                self.space.DEAD_LETTER,
                self.space.EVENTS,
                self.space.DELAYED,
                self.space.TOTAL_RETRIED,
                self.space.TOTAL_FOREIGN,
                self.space.QUEUE,
                self.space.LANE_WAITING,
                *extra_keys,
            ],
            args=args,
        )
        if result[0] == -1:
            raise Fenced(worker_id, epoch)
        return SettleResult(*map(int, result))

    def cancel_queued(self, raw_task: str) -> bool:
        partition_key = partition_key_of(raw_task) or ""
        return (
            self._cancel(
                keys=[
                    self.space.QUEUE,
                    self.space.TOTAL_CANCELLED,
                    self.space.lane_key(partition_key),
                    self.space.lane_owner_key(partition_key),
                    self.space.LANE_WAITING,
                ],
                args=[raw_task, 1 if partition_key else 0],
            )
            == 1
        )

    def release(self, worker_id: str, epoch: int, raw_tasks: Sequence[str]) -> int:
        if not raw_tasks:
            return 0
        result = self._release(
            keys=[
                self.space.worker_state_key(worker_id),
                self.space.worker_inflight_key(worker_id),
                self.space.QUEUE,
                self.space.TOTAL_FENCED,
            ],
            args=[epoch, *raw_tasks],
        )
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
        now = time.time()  # only for the records shown to people (dead letter, stored result)
        cause_args: list[object] = ["", "", 0, "", "", "", ""]
        if cause is not None:
            entry = "" if cause.retry_raw else dead_letter_entry(cause, worker_id)
            stored = cause.stored_result(worker_id, now)
            cause_args = [cause.raw, cause.retry_raw, cause.retry_in_s, entry, cause.category, cause.message, stored]
        # Tasks whose submitters wait for a result get it even when dead-lettered here,
        # and a dead-lettered keyed task releases its lane.
        extra_keys: list[str] = []
        extras: dict[str, list[int]] = {}
        for raw in self.inflight(worker_id):
            result_number = lane_number = 0
            if common.WANTS_RESULT in raw:
                extra_keys.append(self.space.result_key(common.task_id_of(raw)))
                result_number = len(extra_keys)
            partition_key = partition_key_of(raw)
            if partition_key is not None:
                lane_number = len(extra_keys) + 1
                extra_keys.extend((self.space.lane_key(partition_key), self.space.lane_owner_key(partition_key)))
            if result_number or lane_number:
                extras[raw] = [result_number, lane_number]
        epoch, requeued, dead = self._reclaim(
            keys=[
                self.space.worker_state_key(worker_id),
                self.space.worker_inflight_key(worker_id),
                self.space.QUEUE,
                self.space.DEAD_LETTER,
                self.space.ACTIVE_WORKERS,
                self.space.WORKER_EVENTS,
                self.space.TOTAL_REQUEUED,
                self.space.TOTAL_DEAD_LETTERED,
                self.space.TOTAL_ERRORS,
                self.space.worker_errors_key(worker_id),
                self.space.WORK_ERRORS,
                self.space.worker_lease_key(worker_id),
                self.space.DELAYED,
                self.space.TOTAL_RETRIED,
                self.space.TOTAL_FOREIGN,
                self.space.LANE_WAITING,
                *extra_keys,
            ],
            args=[
                worker_id,
                max_crashes,
                self.events_maxlen,
                self.completions_maxlen,
                reason,
                1 if crashed else 0,
                1 if only_if_expired else 0,
                *cause_args,
                self.result_ttl_ms,
                dumps(extras) if extras else "{}",
                deadline_of or "",
            ],
        )
        if epoch == -1:
            return None
        return ReclaimResult(int(epoch), int(requeued), int(dead))

    def retire_finished(self, grace_s: float) -> int:
        retired = 0
        for worker_id in sorted(self.known_workers() - self.active_workers()):
            retired += int(
                self._retire(
                    keys=[
                        self.space.worker_state_key(worker_id),
                        self.space.worker_inflight_key(worker_id),
                        self.space.worker_completed_key(worker_id),
                        self.space.worker_errors_key(worker_id),
                        self.space.worker_lease_key(worker_id),
                        self.space.ACTIVE_WORKERS,
                        self.space.KNOWN_WORKERS,
                        self.space.RETIRED_COMPLETED,
                        self.space.RETIRED_ERRORS,
                        self.space.TOTAL_RETIRED,
                        self.space.worker_slots_key(worker_id),
                    ],
                    args=[worker_id, float(grace_s)],
                )
            )
        return retired

    def limits(self, worker_id: str | None = None) -> RedisLimits:
        return RedisLimits(self.redis, worker_id, space=self.space)

    def retry_dead_letters(self, entries: Sequence[dict[str, Any]]) -> int:
        args: list[object] = []
        lanes = _Lanes(self.space)
        for entry_raw, fresh in common.retry_pairs(entries):
            partition_key = partition_key_of(fresh)
            args.extend((entry_raw, fresh, lanes.number(partition_key) if partition_key else 0))
        if not args:
            return 0
        return int(
            self._dlq_retry(
                keys=[
                    self.space.DEAD_LETTER,
                    self.space.QUEUE,
                    self.space.TOTAL_WORK_CREATED,
                    self.space.TOTAL_DLQ_RETRIED,
                    self.space.LANE_WAITING,
                    *lanes.keys,
                ],
                args=args,
            )
        )

    def purge_dead_letters(self, entries: Sequence[dict[str, Any]] | None = None) -> int:
        args = [] if entries is None else [entry["raw"] for entry in entries]
        if entries is not None and not args:
            return 0
        return int(self._dlq_purge(keys=[self.space.DEAD_LETTER, self.space.TOTAL_DLQ_PURGED], args=args))
