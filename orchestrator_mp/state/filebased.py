"""FileStateManager: the legacy file-based state, kept as the fallback when no Redis
server can run. Correct across processes, and deliberately simple; it is the slow path.

::

    every write   flock(EX) ─ read state.json ─ change it ─ append to logs + fsync ─
                  state.json.tmp + fsync ─ rename ─ fsync dir ─ unlock
    every read    flock(SH) ─ read state.json (+ the committed part of a log)

``state.json`` holds what the Redis layouts keep in hashes, sets and counters:
worker states, active / known workers, each worker's in-flight list and counters,
the global counters, and the front of the queue (tasks handed back, taken first).
The queue's backlog, the dead letters and the streams are append-only logs
(see :mod:`.filestore`). One transaction is one atomic step, as the contract asks;
a crash at any point leaves either the old or the new state.

The cost: every write is a whole-directory lock and three or more fsyncs, and an
idle worker polls the queue with short sleeps (there is nothing to block on).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Iterable, Sequence

from .. import keys
from ..exceptions import Fenced
from ..models import Outcome, dumps
from . import common
from .base import ReclaimResult, SettleResult, StateManager, StreamTail
from .filestore import FileStore, Transaction

QUEUE_LOG = "queue"
DEAD_LETTER_LOG = "dead_letter"
_POLL_FIRST_S = 0.001
_POLL_CAP_S = 0.02

_INITIAL = {
    "format": 1,
    "workers": {},
    "active": [],
    "known": [],
    "inflight": {},
    "worker_counts": {},
    "counters": {},
    "front": [],
    "logs": {},
}


def state_dir_for(db_path: str) -> str:
    """Where the file-based state of database ``db_path`` lives: ``PATH.files/``."""
    return os.path.abspath(db_path) + ".files"


def _add(members: list[str], item: str) -> None:
    if item not in members:
        members.append(item)


def _discard(members: list[str], item: str) -> None:
    if item in members:
        members.remove(item)


class FileStateManager(StateManager):
    """Shared state in a directory (``PATH.files``), safe across processes.

    Args:
        directory: the state directory; created if missing.
        completions_maxlen / events_maxlen: approximate caps of the stream logs.
    """

    kind = "file"

    def __init__(self, directory: str, *, completions_maxlen: int = 200_000, events_maxlen: int = 20_000) -> None:
        self.store = FileStore(directory, _INITIAL)
        self.directory = self.store.directory
        self.completions_maxlen = completions_maxlen
        self.events_maxlen = events_maxlen

    def close(self) -> None:
        """Nothing stays open between calls."""

    # -- helpers --------------------------------------------------------------------------
    def _xadd(self, txn: Transaction, stream: str, maxlen: int, fields: dict[str, object]) -> None:
        entry = {name: common.encode_value(value) for name, value in fields.items()}
        txn.trim(stream, maxlen)
        txn.append(stream, [[txn.next_id(stream), entry]])

    def _event(self, txn: Transaction, fields: dict[str, object]) -> None:
        self._xadd(txn, keys.EVENTS, self.events_maxlen, fields)

    def _count(self, txn: Transaction, name: str, amount: int = 1) -> int:
        counters = txn.doc["counters"]
        counters[name] = counters.get(name, 0) + amount
        return counters[name]

    def _worker_count(self, txn: Transaction, worker_id: str, field: str, amount: int) -> None:
        counts = txn.doc["worker_counts"].setdefault(worker_id, {"completed": 0, "errors": 0})
        counts[field] += amount

    @staticmethod
    def _fenced(txn: Transaction, worker_id: str, epoch: int) -> bool:
        return txn.doc["workers"].get(worker_id, {}).get("epoch") != str(epoch)

    # -- workers --------------------------------------------------------------------------
    def register_worker(self, worker_id: str, *, pid: int, host: str) -> int:
        with self.store.write() as txn:
            state = txn.doc["workers"].setdefault(worker_id, {})
            now = common.encode_value(time.time())
            epoch = int(state.get("epoch", 0)) + 1
            version = int(state.get("version", 0)) + 1
            state.update(
                epoch=str(epoch), version=str(version), status="idle", current_task="",
                pid=common.encode_value(pid), host=host, started_at=now, last_activity=now,
            )
            _add(txn.doc["active"], worker_id)
            _add(txn.doc["known"], worker_id)
            self._xadd(txn, keys.WORKER_EVENTS, self.events_maxlen,
                       {"event": "registered", "worker": worker_id, "pid": pid, "host": host, "epoch": epoch})
            self._event(txn, {"event": "state", "worker": worker_id, "status": "idle", "version": version})
        return epoch

    def deregister_worker(self, worker_id: str, epoch: int) -> None:
        with self.store.write() as txn:
            if self._fenced(txn, worker_id, epoch):
                raise Fenced(worker_id, epoch)
            state = txn.doc["workers"][worker_id]
            version = int(state.get("version", 0)) + 1
            state.update(version=str(version), status="stopped", current_task="",
                         last_activity=common.encode_value(time.time()))
            _discard(txn.doc["active"], worker_id)
            self._xadd(txn, keys.WORKER_EVENTS, self.events_maxlen,
                       {"event": "deregistered", "worker": worker_id, "epoch": epoch})
            self._event(txn, {"event": "state", "worker": worker_id, "status": "stopped", "version": version})

    def active_workers(self) -> set[str]:
        with self.store.read() as snap:
            return set(snap.doc["active"])

    def known_workers(self) -> set[str]:
        with self.store.read() as snap:
            return set(snap.doc["known"])

    def get_worker_state(self, worker_id: str) -> dict[str, str]:
        with self.store.read() as snap:
            return dict(snap.doc["workers"].get(worker_id, {}))

    def batch_get_worker_states(self, worker_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        with self.store.read() as snap:
            return {worker_id: dict(snap.doc["workers"].get(worker_id, {})) for worker_id in worker_ids}

    def update_worker_field(
        self, worker_id: str, field: str, value: object, *, epoch: int | None = None, pipeline: Any = None
    ) -> int:
        """As the contract says; ``pipeline`` is accepted and ignored (written at once)."""
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
        with self.store.write() as txn:
            if epoch is not None and self._fenced(txn, worker_id, epoch):
                raise Fenced(worker_id, epoch)
            state = txn.doc["workers"].setdefault(worker_id, {})
            if expected_version is not None and state.get("version", "0") != str(expected_version):
                if not state:
                    del txn.doc["workers"][worker_id]
                return 0
            version = int(state.get("version", 0)) + 1
            state.update(fields)
            state["version"] = str(version)
            self._event(txn, {"event": "state", "worker": worker_id, "version": version, **fields})
        return version

    # -- counters, metrics ----------------------------------------------------------------
    def increment_counter(self, name: str, amount: int = 1, *, pipeline: Any = None) -> int:
        with self.store.write() as txn:
            value = self._count(txn, keys.counter_key(name), amount)
        return 0 if pipeline is not None else value

    def get_counter(self, name: str) -> int:
        with self.store.read() as snap:
            return int(snap.doc["counters"].get(keys.counter_key(name), 0))

    def get_counters(self, names: Sequence[str] = keys.COUNTERS) -> dict[str, int]:
        with self.store.read() as snap:
            return {name: int(snap.doc["counters"].get(keys.counter_key(name), 0)) for name in names}

    def worker_counters(self, worker_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        with self.store.read() as snap:
            counts = snap.doc["worker_counts"]
            return {w: dict(counts.get(w, {"completed": 0, "errors": 0})) for w in sorted(worker_ids)}

    def record_metric(
        self, name: str, value: float, tags: dict[str, object] | None = None, *, pipeline: Any = None
    ) -> None:
        fields: dict[str, object] = {"name": name, "value": value, "ts": time.time()}
        if tags:
            fields["tags"] = dumps(tags)
        with self.store.write() as txn:
            self._xadd(txn, keys.METRICS, self.events_maxlen, fields)

    def stream_tail(self, stream: str) -> StreamTail:
        with self.store.read() as snap:
            last = snap.tail(stream, 1)
            return StreamTail(length=snap.count(stream), last=last[0][1] if last else {})

    def read_stream(self, stream: str, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        with self.store.read() as snap:
            return [(entry_id, fields) for entry_id, fields in snap.tail(stream, count)]

    # -- the queue ------------------------------------------------------------------------
    def submit(self, raw_tasks: Sequence[str]) -> int:
        if not raw_tasks:
            return 0
        with self.store.write() as txn:
            txn.append(QUEUE_LOG, list(raw_tasks))
            self._count(txn, keys.TOTAL_WORK_CREATED, len(raw_tasks))
        return len(raw_tasks)

    def _depth(self, doc: dict[str, Any]) -> int:
        return len(doc["front"]) + (doc["logs"].get(QUEUE_LOG) or {"count": 0})["count"]

    def claim(self, worker_id: str, epoch: int, max_count: int, divisor: int = 1) -> list[str]:
        with self.store.write() as txn:
            if self._fenced(txn, worker_id, epoch):
                raise Fenced(worker_id, epoch)
            want = common.fair_share(max_count, self._depth(txn.doc), divisor)
            if want == 0:
                return []
            front = txn.doc["front"]
            claimed = front[:want]
            del front[:want]
            claimed += txn.pop_oldest(QUEUE_LOG, want - len(claimed))
            txn.doc["inflight"].setdefault(worker_id, []).extend(claimed)
            state = txn.doc["workers"][worker_id]
            version = int(state.get("version", 0)) + 1
            task_id = common.task_id_of(claimed[0], "?")
            state.update(version=str(version), status="busy", current_task=task_id, batch=str(want),
                         last_activity=common.encode_value(time.time()))
            self._event(txn, {"event": "state", "worker": worker_id, "status": "busy", "current_task": task_id,
                              "batch": want, "version": version})
        return claimed

    def wait_claim(self, worker_id: str, epoch: int, max_count: int, divisor: int, timeout_s: float) -> list[str]:
        """Claim, then poll the queue (shared lock) with short sleeps: the legacy, slow path."""
        deadline = time.monotonic() + timeout_s
        delay = _POLL_FIRST_S
        while True:
            claimed = self.claim(worker_id, epoch, max_count, divisor)
            if claimed:
                return claimed
            while True:
                with self.store.read() as snap:
                    if self._depth(snap.doc):
                        break
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                time.sleep(min(left, delay))
                delay = min(_POLL_CAP_S, delay * 2)

    def settle(self, worker_id: str, epoch: int, outcomes: Sequence[Outcome]) -> SettleResult:
        if not outcomes:
            return SettleResult(0, 0, 0)
        with self.store.write() as txn:
            if self._fenced(txn, worker_id, epoch):
                self._count(txn, keys.TOTAL_FENCED, len(outcomes))
                fenced = True
            else:
                fenced = False
                result = self._settle(txn, worker_id, outcomes)
        if fenced:
            raise Fenced(worker_id, epoch)
        return result

    def _settle(self, txn: Transaction, worker_id: str, outcomes: Sequence[Outcome]) -> SettleResult:
        inflight = txn.doc["inflight"].setdefault(worker_id, [])
        done, failed, duplicates = common.split_settled(inflight, outcomes)
        now = time.time()
        for outcome in done:
            inflight.remove(outcome.raw)
            n = self._count(txn, keys.TOTAL_WORK_COMPLETED)
            self._xadd(txn, keys.WORK_COMPLETIONS, self.completions_maxlen, {
                "n": n, "task_id": outcome.task_id, "name": outcome.name, "worker": worker_id,
                "wait_ms": common.ms(outcome.wait_ms), "run_ms": common.ms(outcome.run_ms)})
        for outcome in failed:
            inflight.remove(outcome.raw)
            n = self._count(txn, keys.TOTAL_ERRORS)
            self._xadd(txn, keys.WORK_ERRORS, self.completions_maxlen, {
                "n": n, "task_id": outcome.task_id, "name": outcome.name, "worker": worker_id,
                "category": outcome.category, "message": outcome.message})
            txn.append(DEAD_LETTER_LOG, [common.dead_letter_entry(
                outcome.raw, outcome.task_id, outcome.name, outcome.category, outcome.message,
                outcome.traceback, worker_id, now)])
            self._count(txn, keys.TOTAL_DEAD_LETTERED)
        self._worker_count(txn, worker_id, "completed", len(done))
        self._worker_count(txn, worker_id, "errors", len(failed))
        if duplicates:
            self._count(txn, keys.TOTAL_DUPLICATES, duplicates)
        state = txn.doc["workers"][worker_id]
        version = int(state.get("version", 0)) + 1
        state.update(version=str(version), status="idle", current_task="", batch="0",
                     last_activity=common.encode_value(now))
        self._event(txn, {"event": "state", "worker": worker_id, "status": "idle", "completed": len(done),
                          "failed": len(failed), "version": version})
        return SettleResult(len(done), len(failed), duplicates)

    def release(self, worker_id: str, epoch: int, raw_tasks: Sequence[str]) -> int:
        if not raw_tasks:
            return 0
        with self.store.write() as txn:
            if self._fenced(txn, worker_id, epoch):
                raise Fenced(worker_id, epoch)
            inflight = txn.doc["inflight"].setdefault(worker_id, [])
            released = []
            for raw in raw_tasks:
                if raw in inflight:
                    inflight.remove(raw)
                    released.append(raw)
            txn.doc["front"][:0] = list(reversed(released))  # the last handed back is taken first
        return len(released)

    def reclaim(self, worker_id: str, *, max_crashes: int, reason: str = "died") -> ReclaimResult:
        with self.store.write() as txn:
            state = txn.doc["workers"].setdefault(worker_id, {})
            epoch = int(state.get("epoch", 0)) + 1
            state.update(epoch=str(epoch), status="dead", current_task="", batch="0")
            inflight = txn.doc["inflight"].pop(worker_id, [])
            requeued: list[str] = []
            dead = 0
            now = time.time()
            for raw in inflight:  # claim order: the oldest claimed lands in front
                again, category, message = common.requeue_or_poison(raw, max_crashes)
                if again is not None:
                    requeued.append(again)
                    continue
                task_id, name = common.task_id_of(raw), common.name_of(raw)
                self._worker_count(txn, worker_id, "errors", 1)
                n = self._count(txn, keys.TOTAL_ERRORS)
                self._xadd(txn, keys.WORK_ERRORS, self.completions_maxlen, {
                    "n": n, "task_id": task_id, "name": name, "worker": worker_id,
                    "category": category, "message": message})
                txn.append(DEAD_LETTER_LOG, [common.dead_letter_entry(
                    raw, task_id, name, category, message, "", worker_id, now)])
                self._count(txn, keys.TOTAL_DEAD_LETTERED)
                dead += 1
            txn.doc["front"][:0] = requeued
            if requeued:
                self._count(txn, keys.TOTAL_REQUEUED, len(requeued))
            _discard(txn.doc["active"], worker_id)
            self._xadd(txn, keys.WORKER_EVENTS, self.events_maxlen, {
                "event": "reclaimed", "worker": worker_id, "reason": reason, "epoch": epoch,
                "requeued": len(requeued), "dead_lettered": dead})
        return ReclaimResult(epoch, len(requeued), dead)

    def queue_depths(self, worker_ids: Iterable[str] | None = None) -> dict[str, Any]:
        with self.store.read() as snap:
            doc = snap.doc
            ids = sorted(doc["known"] if worker_ids is None else worker_ids)
            by_worker = {w: len(doc["inflight"].get(w, ())) for w in ids}
            return {
                "pending": self._depth(doc),
                "inflight": sum(by_worker.values()),
                "dead_letter": snap.count(DEAD_LETTER_LOG),
                "by_worker": by_worker,
            }

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.store.read() as snap:
            raws = snap.tail(DEAD_LETTER_LOG, limit)
        entries = []
        for raw in reversed(raws):
            try:
                entries.append(json.loads(raw))
            except ValueError:
                entries.append({"task": raw, "category": "bad_payload", "message": "unreadable entry"})
        return entries
