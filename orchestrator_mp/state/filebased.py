"""FileStateManager: the legacy file-based state, kept as the fallback when no Redis
server can run. Correct across processes, and deliberately simple; it is the slow path.

::

    every write   flock(EX) ─ read state.json ─ plan (a step's Python twin, state/steps/) ─ apply: change
                  the document, append to logs + fsync ─ state.json.tmp + fsync ─
                  rename ─ fsync dir ─ unlock
    every read    flock(SH) ─ read state.json (+ the committed part of a log)

``state.json`` holds what the Redis layouts keep in hashes, sets, sorted sets and
counters; the queue's backlog, dead letters, stored task results and the streams are
append-only logs (:mod:`.fileops` gives the layout and applies each planned step,
:mod:`.filestore` the transactions). One transaction is one atomic step, as the
contract asks; a crash at any point leaves either the old or the new state.

The cost: every write is a whole-directory lock and three or more fsyncs (heartbeats
included), and whatever waits (an idle worker, :meth:`wait_result`, :meth:`follow`)
polls with short sleeps: there is nothing to block on. Cancelling a queued task and
retrying or purging dead letters rewrite their log. Rate limits and concurrency caps
are not supported (``limits()`` is None): limited tasks fail with a clear message.
"""
from __future__ import annotations

import bisect
import os
import threading
import time
from typing import Any, Callable, Iterable, Sequence, TypeVar, cast

from .. import keys
from ..models import Outcome
from .base import (
    AuditSnapshot,
    ReclaimResult,
    SettleResult,
    StreamTail,
    decode_dead_letter,
    decode_result,
    metric_fields,
)
from .fileops import DEAD_LETTER_LOG, INITIAL, QUEUE_LOG, RESULTS_LOG, FileApplier
from .filestore import FileStore, Reader, Transaction
from .mirrored import MirroredStateManager
from .steps import claim, deadletters, ops, reclaim, release, settle, submit, workers
from .steps.ops import R, Step, Tally

_POLL_FIRST_S = 0.001
_POLL_CAP_S = 0.02
_PROMOTE_LIMIT = 1000
T = TypeVar("T")  # what a polled read returns


def state_dir_for(db_path: str) -> str:
    """Where the file-based state of database ``db_path`` lives: ``PATH.files/``."""
    return os.path.abspath(db_path) + ".files"


def _poll(read: Callable[[], T], timeout_s: float | None) -> T:
    """Call ``read`` until it returns something truthy or ``timeout_s`` passes (None:
    forever), sleeping 1 ms doubling to 20 ms between calls; returns the last value."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = _POLL_FIRST_S
    while True:
        value = read()
        if value:
            return value
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return value
        time.sleep(delay if left is None else min(left, delay))
        delay = min(_POLL_CAP_S, delay * 2)


class _ResultIndex:
    """Where each task's newest stored result sits in the results log, as far as this
    process has read it: each lookup reads only what was appended since the last one."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._gen: int | None = None
        self._end = 0
        self._where: dict[str, tuple[int, float]] = {}  # task id -> (offset, expiry)

    def get(self, snap: Reader, task_ids: Sequence[str], now: float) -> dict[str, dict[str, Any] | None]:
        with self._guard:
            rec = snap.log(RESULTS_LOG)
            if rec["gen"] != self._gen:
                self._gen, self._end, self._where = rec["gen"], 0, {}
            found, self._end = snap.scan(RESULTS_LOG, self._end)
            for offset, (task_id, expires, _stored) in found:
                self._where[task_id] = (offset, expires)
            results: dict[str, dict[str, Any] | None] = {}
            for task_id in task_ids:
                offset, expires = self._where.get(task_id, (-1, 0.0))
                alive = offset >= rec["start"] and expires > now
                results[task_id] = decode_result(snap.value_at(RESULTS_LOG, offset)[2]) if alive else None
            return results


class FileStateManager(MirroredStateManager):
    """Shared state in a directory (``PATH.files``), safe across processes.

    Args:
        directory: the state directory; created if missing.
        completions_maxlen / events_maxlen: approximate caps of the stream logs.
        lease_s: how long a worker's lease lasts without a heartbeat.
        result_ttl_s: how long a stored task result is kept.
    """

    kind = "file"

    def __init__(
        self,
        directory: str,
        *,
        completions_maxlen: int = 200_000,
        events_maxlen: int = 20_000,
        lease_s: float = 3.0,
        result_ttl_s: float = 86_400.0,
    ) -> None:
        super().__init__(
            completions_maxlen=completions_maxlen,
            events_maxlen=events_maxlen,
            worker_lease_s=lease_s,
            result_ttl_s=result_ttl_s,
        )
        self.store = FileStore(directory, INITIAL)
        self.directory = self.store.directory
        self._results = _ResultIndex()
        self._applier = FileApplier(
            self.maxlen,
            worker_lease_s=self.worker_lease_s,
            result_ttl_s=self.result_ttl_s,
            submit_marker_ttl_s=self.submit_marker_ttl_s,
        )
    def close(self) -> None:
        """Nothing stays open between calls."""

    # -- transactions -----------------------------------------------------------------------
    def _transact(self, plan: Callable[[Transaction], Step[R]]) -> R:
        """One step: plan it from the document, apply it, commit; then return or raise."""
        with self.store.write() as txn:
            step = plan(txn)
            self._applier.apply(txn, step)
        if step.error is not None:
            raise step.error
        return cast(R, step.result)  # no error: the planner set the result (None only where R allows it)

    @staticmethod
    def _tally(txn: Transaction) -> Tally:
        counters = txn.doc["counters"]
        return Tally(lambda key: counters.get(key, 0))

    @staticmethod
    def _state(txn: Reader, worker_id: str) -> dict[str, str]:
        return dict(txn.doc["workers"].get(worker_id, {}))

    @staticmethod
    def _inflight(snap: Reader, worker_id: str) -> list[str]:
        return list(snap.doc["inflight"].get(worker_id, ()))

    # -- workers --------------------------------------------------------------------------
    def register_worker(self, worker_id: str, *, pid: int, host: str) -> int:
        return self._transact(
            lambda txn: workers.plan_register(worker_id, self._state(txn, worker_id), pid=pid, host=host,
                                             now=time.time())
        )

    def heartbeat(self, worker_id: str, epoch: int) -> None:
        self._transact(lambda txn: workers.plan_heartbeat(worker_id, self._state(txn, worker_id), epoch, time.time()))

    def expired_workers(self) -> list[str]:
        with self.store.read() as snap:
            leases, now = snap.doc["leases"], time.time()
            return sorted(w for w in snap.doc["active"] if leases.get(w, 0.0) <= now)

    def clock(self) -> float:
        """The machine's clock: the file state serves one machine."""
        return time.time()

    def start_task(self, worker_id: str, epoch: int, task_id: str, time_limit_s: float) -> float:
        return self._transact(
            lambda txn: workers.plan_start_task(
                worker_id, self._state(txn, worker_id), epoch, task_id, time.time() + float(time_limit_s)
            )
        )

    def deregister_worker(self, worker_id: str, epoch: int) -> None:
        self._transact(
            lambda txn: workers.plan_deregister(worker_id, self._state(txn, worker_id), epoch, time.time())
        )

    def active_workers(self) -> set[str]:
        with self.store.read() as snap:
            return set(snap.doc["active"])

    def known_workers(self) -> set[str]:
        with self.store.read() as snap:
            return set(snap.doc["known"])

    def get_worker_state(self, worker_id: str) -> dict[str, str]:
        with self.store.read() as snap:
            return self._state(snap, worker_id)

    def batch_get_worker_states(self, worker_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        with self.store.read() as snap:
            return {worker_id: self._state(snap, worker_id) for worker_id in worker_ids}

    def _do_update_state(
        self, worker_id: str, fields: dict[str, str], expected_version: int | None, epoch: int | None
    ) -> int:
        return self._transact(
            lambda txn: workers.plan_update(worker_id, self._state(txn, worker_id), fields, expected_version, epoch)
        )

    # -- counters, streams ----------------------------------------------------------------
    def increment_counter(self, name: str, amount: int = 1, *, pipeline: Any = None) -> int:
        """As the contract says; ``pipeline`` is accepted and ignored (written at once)."""
        value = self._transact(lambda txn: ops.plan_increment(keys.counter_key(name), amount, self._tally(txn)))
        return 0 if pipeline is not None else value

    def get_counter(self, name: str) -> int:
        return self.get_counters([name])[name]

    def get_counters(self, names: Sequence[str] = keys.COUNTERS) -> dict[str, int]:
        with self.store.read() as snap:
            return {name: int(snap.doc["counters"].get(keys.counter_key(name), 0)) for name in names}

    def worker_counters(self, worker_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        with self.store.read() as snap:
            return self._worker_counters(snap, worker_ids)

    @staticmethod
    def _worker_counters(snap: Reader, worker_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        counters = snap.doc["counters"]
        return {
            w: {"completed": counters.get(keys.worker_completed_key(w), 0),
                "errors": counters.get(keys.worker_errors_key(w), 0)}
            for w in sorted(worker_ids)
        }

    def record_metric(
        self, name: str, value: float, tags: dict[str, object] | None = None, *, pipeline: Any = None
    ) -> None:
        with self.store.write() as txn:
            self._applier.xadd(txn, keys.METRICS, metric_fields(name, value, tags))

    def stream_tail(self, stream: str) -> StreamTail:
        with self.store.read() as snap:
            return self._stream_tail(snap, stream)

    @staticmethod
    def _stream_tail(snap: Reader, stream: str) -> StreamTail:
        last = snap.tail(stream, 1)
        if not last:
            return StreamTail(length=snap.count(stream), last={})
        return StreamTail(length=snap.count(stream), last=last[0][1], last_id=last[0][0])

    def read_stream(self, stream: str, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        with self.store.read() as snap:
            return [(entry_id, fields) for entry_id, fields in snap.tail(stream, count)]

    def follow(
        self, positions: dict[str, str], block_s: float, count: int = 1000
    ) -> list[tuple[str, str, dict[str, str]]]:
        """As the contract says, polling the logs with short sleeps (nothing to block on);
        a position of ``$`` means the stream's newest entry now."""
        if "$" in positions.values():
            with self.store.read() as snap:
                for stream, last_id in positions.items():
                    if last_id == "$":
                        positions[stream] = snap.log(stream)["last_id"]

        def read() -> list[tuple[str, str, dict[str, str]]]:
            entries: list[tuple[str, str, dict[str, str]]] = []
            with self.store.read() as snap:
                for stream, last_id in positions.items():
                    found = snap.after(stream, last_id, count)
                    entries.extend((stream, entry_id, fields) for entry_id, fields in found)
                    if found:
                        positions[stream] = found[-1][0]
            return entries

        return _poll(read, block_s)

    # -- the queue ------------------------------------------------------------------------
    def submit(
        self,
        raw_tasks: Sequence[str],
        batch_id: str | None = None,
        due_at: float | None = None,
        *,
        delay_s: float | None = None,
    ) -> int:
        """As the contract says. Only a given ``batch_id`` is recorded: a local transaction
        has no lost reply to retry after, so a fresh id could never repeat."""
        submit.due_spec(due_at, delay_s)
        if not raw_tasks:
            return 0
        self.refuse_partition_keys(raw_tasks)

        def plan(txn: Transaction) -> Step[int]:
            batches, now = txn.doc["batches"], time.time()
            for stale in [b for b, expires in batches.items() if expires <= now]:
                del batches[stale]
            return submit.plan_submit(
                raw_tasks, seen=batch_id in batches, batch_id=batch_id, due_at=submit.due_time(due_at, delay_s, now),
                tally=self._tally(txn),
            )

        return self._transact(plan)

    @staticmethod
    def _depth(snap: Reader) -> int:
        return len(snap.doc["front"]) + snap.count(QUEUE_LOG)

    @staticmethod
    def _due(snap: Reader, now: float, limit: int) -> list[str]:
        delayed = snap.doc["delayed"]
        return [raw for _, raw in delayed[: min(limit, bisect.bisect_right(delayed, now, key=lambda pair: pair[0]))]]

    def promote_due(self, limit: int = 1000) -> int:
        with self.store.read() as snap:
            if not self._due(snap, time.time(), 1):
                return 0  # a shared-lock look first: the supervisor asks ten times a second
        return self._transact(lambda txn: submit.plan_promote(self._due(txn, time.time(), limit)))

    def claim(self, worker_id: str, epoch: int, max_count: int, divisor: int = 1) -> list[str]:
        claim.checked_claim_count(max_count)

        def plan(txn: Transaction) -> Step[list[str]]:
            now = time.time()
            oldest = txn.doc["front"][:max_count]
            oldest += txn.read_oldest(QUEUE_LOG, max_count - len(oldest))[0]
            return claim.plan_claim(
                worker_id, epoch, self._state(txn, worker_id), depth=self._depth(txn), oldest=oldest,
                due=self._due(txn, now, _PROMOTE_LIMIT), max_count=max_count, divisor=divisor, now=now,
            )

        return self._transact(plan)

    def wait_claim(self, worker_id: str, epoch: int, max_count: int, divisor: int, timeout_s: float) -> list[str]:
        """Claim, then poll (shared lock) with short sleeps until a task is queued or a
        delayed one is due: the legacy, slow path."""

        def ready() -> bool:
            with self.store.read() as snap:
                return bool(self._depth(snap) or self._due(snap, time.time(), 1))

        deadline = time.monotonic() + timeout_s
        while True:
            claimed = self.claim(worker_id, epoch, max_count, divisor)
            left = deadline - time.monotonic()
            if claimed or left <= 0 or not _poll(ready, left):
                return claimed

    def settle(self, worker_id: str, epoch: int, outcomes: Sequence[Outcome]) -> SettleResult:
        if not outcomes:
            return SettleResult(0, 0, 0)
        return self._transact(
            lambda txn: settle.plan_settle(
                worker_id, epoch, self._state(txn, worker_id), self._inflight(txn, worker_id), outcomes,
                self._tally(txn), time.time(),
            )
        )

    def cancel_queued(self, raw_task: str) -> bool:
        def plan(txn: Transaction) -> Step[bool]:
            queued = raw_task in txn.doc["front"] or raw_task in txn.values(QUEUE_LOG)
            return submit.plan_cancel(raw_task, queued, self._tally(txn))

        return self._transact(plan)

    def release(self, worker_id: str, epoch: int, raw_tasks: Sequence[str]) -> int:
        if not raw_tasks:
            return 0
        return self._transact(
            lambda txn: release.plan_release(
                worker_id, epoch, self._state(txn, worker_id), self._inflight(txn, worker_id), raw_tasks
            )
        )

    def inflight(self, worker_id: str) -> list[str]:
        with self.store.read() as snap:
            return self._inflight(snap, worker_id)

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
        def plan(txn: Transaction) -> Step[ReclaimResult | None]:
            now = time.time()
            return reclaim.plan_reclaim(
                worker_id, self._state(txn, worker_id), self._inflight(txn, worker_id), self._tally(txn),
                lease_alive=txn.doc["leases"].get(worker_id, 0.0) > now, max_crashes=max_crashes, reason=reason,
                crashed=crashed, only_if_expired=only_if_expired, cause=cause, now=now, deadline_of=deadline_of,
            )

        return self._transact(plan)

    def queue_depths(self, worker_ids: Iterable[str] | None = None) -> dict[str, Any]:
        with self.store.read() as snap:
            return self._depths(snap, worker_ids)

    def _depths(self, snap: Reader, worker_ids: Iterable[str] | None) -> dict[str, Any]:
        doc = snap.doc
        ids = sorted(doc["known"] if worker_ids is None else worker_ids)
        by_worker = {w: len(doc["inflight"].get(w, ())) for w in ids}
        return {
            "pending": self._depth(snap),
            "inflight": sum(by_worker.values()),
            "delayed": len(doc["delayed"]),
            "limited": 0,
            "dead_letter": snap.count(DEAD_LETTER_LOG),
            "by_worker": by_worker,
        }

    def audit_snapshot(self) -> AuditSnapshot:
        """One shared-lock read of the document and the two streams: always exact."""
        with self.store.read() as snap:
            return AuditSnapshot(
                counters={name: int(snap.doc["counters"].get(keys.counter_key(name), 0)) for name in keys.COUNTERS},
                per_worker=self._worker_counters(snap, snap.doc["known"]),
                completions=self._stream_tail(snap, keys.WORK_COMPLETIONS),
                errors=self._stream_tail(snap, keys.WORK_ERRORS),
                depths=self._depths(snap, None),
            )

    # -- dead letters ---------------------------------------------------------------------------
    def dead_letters(self, limit: int | None = 100) -> list[dict[str, Any]]:
        with self.store.read() as snap:
            raws = snap.values(DEAD_LETTER_LOG) if limit is None else snap.tail(DEAD_LETTER_LOG, limit)
        return [decode_dead_letter(raw) for raw in reversed(raws)]

    def retry_dead_letters(self, entries: Sequence[dict[str, Any]]) -> int:
        pairs = deadletters.retry_pairs(entries)
        if not pairs:
            return 0
        return self._transact(
            lambda txn: deadletters.plan_dlq_retry(txn.values(DEAD_LETTER_LOG), pairs, self._tally(txn))
        )

    def purge_dead_letters(self, entries: Sequence[dict[str, Any]] | None = None) -> int:
        raws = None if entries is None else [entry["raw"] for entry in entries]
        if raws is not None and not raws:
            return 0
        return self._transact(
            lambda txn: deadletters.plan_dlq_purge(txn.values(DEAD_LETTER_LOG), raws, self._tally(txn))
        )

    # -- results ----------------------------------------------------------------------------
    def get_results(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        with self.store.read() as snap:
            return self._results.get(snap, task_ids, time.time())

    def wait_result(self, task_id: str, timeout_s: float | None) -> dict[str, Any] | None:
        """As the contract says, but polling (1 ms doubling to 20 ms): files have no
        blocking read."""
        return _poll(lambda: self.get_results([task_id])[task_id], timeout_s)

    def task_status(self, task_id: str) -> tuple[str, dict[str, Any] | None]:
        needle = f'"id":"{task_id}"'
        with self.store.read() as snap:
            stored = self._results.get(snap, [task_id], time.time())[task_id]
            if stored is not None:
                return stored.get("status", "unknown"), stored
            doc = snap.doc
            if any(needle in raw for w in doc["known"] for raw in doc["inflight"].get(w, ())):
                return "running", None
            if any(needle in raw for raw in doc["front"]) or any(needle in raw for raw in snap.values(QUEUE_LOG)):
                return "queued", None
            if any(needle in raw for _, raw in doc["delayed"]):
                return "delayed", None
        return "unknown", None
