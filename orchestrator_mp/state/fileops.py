"""How a planned step (a step's Python twin, :mod:`.steps`) changes the file state: the layout of
``state.json`` and its logs, and one applier per operation.

``state.json`` (:data:`INITIAL`) holds what the Redis layouts keep in hashes, sets,
sorted sets and counters: ``workers`` (id -> state), ``active`` and ``known`` worker
ids, ``leases`` (id -> expiry, epoch seconds), ``inflight`` (id -> raw tasks, oldest
claim first), ``counters`` (every counter, global and per worker, under its Redis key
name), ``front`` (the queue's near end: tasks handed back or requeued, taken first),
``delayed`` ([due, raw] pairs, sorted) and ``batches`` (submitted batch id -> expiry).
The queue's backlog (claimed oldest first), dead letters (newest last), stored results
and the streams are append-only logs.
"""
from __future__ import annotations

import bisect
import time
from collections import Counter
from typing import Any, Callable, Mapping

from .. import keys
from .filestore import Transaction
from .steps import ops
from .steps.ops import Step

QUEUE_LOG = "queue"
DEAD_LETTER_LOG = "dead_letter"
RESULTS_LOG = "results"  # [task id, expiry (epoch s), stored JSON], newest last; a later line wins
_PRUNE_RESULTS = 16  # expired results dropped from the log's old end per storing transaction

# The document of an empty state directory (see the module docstring).
INITIAL = {
    "format": 2,
    "workers": {},
    "active": [],
    "known": [],
    "leases": {},
    "inflight": {},
    "counters": {},
    "front": [],
    "delayed": [],
    "batches": {},
    "logs": {},
}


def _add(members: list[str], item: str) -> None:
    if item not in members:
        members.append(item)


def _discard(members: list[str], item: str) -> None:
    if item in members:
        members.remove(item)


def _remove_last(values: list[Any], item: Any) -> bool:
    """Remove the newest occurrence (what ``LREM key 1`` removes from a list LPUSHed to)."""
    for index in range(len(values) - 1, -1, -1):
        if values[index] == item:
            del values[index]
            return True
    return False


class FileApplier:
    """Applies planned steps to a file transaction.

    Args:
        maxlen: the approximate cap of a stream, by name.
        worker_lease_s / result_ttl_s / submit_marker_ttl_s: lifetimes of leases,
            stored results and batch markers.
    """

    def __init__(
        self, maxlen: Callable[[str], int], *, worker_lease_s: float, result_ttl_s: float, submit_marker_ttl_s: float
    ) -> None:
        self.maxlen = maxlen
        self.worker_lease_s = worker_lease_s
        self.result_ttl_s = result_ttl_s
        self.submit_marker_ttl_s = submit_marker_ttl_s
        self._appliers: dict[str, Callable[..., object]] = {  # what an applier returns is dropped
            ops.STREAM: lambda txn, w, stream, fields: self.xadd(txn, stream, fields),
            ops.DEAD_LETTER: lambda txn, w, entry: txn.append(DEAD_LETTER_LOG, [entry]),
            ops.DELAY: lambda txn, w, due, raw: bisect.insort(txn.doc["delayed"], [float(due), raw]),
            ops.RESULT: lambda txn, w, task_id, stored: txn.append(
                RESULTS_LOG, [[task_id, time.time() + self.result_ttl_s, stored]]
            ),
            ops.REQUEUE: lambda txn, w, raw: txn.doc["front"].insert(0, raw),
            ops.UNCLAIM: lambda txn, w, raw: txn.doc["inflight"][w].remove(raw),
            ops.LEASE: self._lease,
            ops.MEMBERSHIP: self._membership,
            ops.ENQUEUE: lambda txn, w, raws: txn.append(QUEUE_LOG, list(raws)),
            ops.SUBMITTED: lambda txn, w, batch_id: txn.doc["batches"].__setitem__(
                batch_id, time.time() + self.submit_marker_ttl_s
            ),
            ops.PROMOTE_DUE: self._promote,
            ops.TAKE: self._take,
            ops.DROP_INFLIGHT: lambda txn, w: txn.doc["inflight"].pop(w, None),
            ops.WITHDRAW: self._cancel,
            ops.UNLETTER: lambda txn, w, entry: _remove_last(txn.editable(DEAD_LETTER_LOG), entry),
            ops.UNLETTER_ALL: lambda txn, w: txn.editable(DEAD_LETTER_LOG).clear(),
        }

    def apply(self, txn: Transaction, step: Step[Any]) -> None:
        """Make ``step``'s changes to the transaction's document and logs, in order."""
        for kind, *args in step.ops:
            self._appliers[kind](txn, step.worker_id, *args)
        if step.state is not None:
            txn.doc["workers"][step.worker_id] = step.state
        counters = txn.doc["counters"]
        counters.update(step.changed_counters)
        if step.fenced:
            counters[keys.TOTAL_FENCED] = counters.get(keys.TOTAL_FENCED, 0) + step.fenced
        if any(op[0] == ops.RESULT for op in step.ops):
            self._prune_results(txn)

    def xadd(self, txn: Transaction, stream: str, fields: Mapping[str, object]) -> None:
        entry = {name: ops.encode_value(value) for name, value in fields.items()}
        txn.trim(stream, self.maxlen(stream))
        txn.append(stream, [[txn.next_id(stream), entry]])

    def _lease(self, txn: Transaction, worker_id: str, epoch: int | None) -> None:
        if epoch is None:
            txn.doc["leases"].pop(worker_id, None)
        else:
            txn.doc["leases"][worker_id] = time.time() + self.worker_lease_s

    @staticmethod
    def _membership(txn: Transaction, worker_id: str, active: bool) -> None:
        if active:
            _add(txn.doc["active"], worker_id)
            _add(txn.doc["known"], worker_id)
        else:
            _discard(txn.doc["active"], worker_id)

    @staticmethod
    def _promote(txn: Transaction, _worker_id: str, due: list[str]) -> None:
        moving = Counter(due)
        kept = []
        for pair in txn.doc["delayed"]:
            if moving[pair[1]] > 0:
                moving[pair[1]] -= 1
            else:
                kept.append(pair)
        txn.doc["delayed"] = kept
        txn.append(QUEUE_LOG, due)

    @staticmethod
    def _take(txn: Transaction, worker_id: str, claimed: list[str]) -> None:
        front = txn.doc["front"]
        from_front = min(len(claimed), len(front))
        del front[:from_front]
        txn.pop_oldest(QUEUE_LOG, len(claimed) - from_front)
        txn.doc["inflight"].setdefault(worker_id, []).extend(claimed)

    @staticmethod
    def _cancel(txn: Transaction, _worker_id: str, raw: str) -> None:
        # The queue's newest end is the log's end, its oldest the front's start.
        if raw in txn.values(QUEUE_LOG):
            _remove_last(txn.editable(QUEUE_LOG), raw)
        else:
            _remove_last(txn.doc["front"], raw)

    def _prune_results(self, txn: Transaction) -> None:
        oldest, _ = txn.read_oldest(RESULTS_LOG, _PRUNE_RESULTS)
        now = time.time()
        expired = next((i for i, (_, expires, _) in enumerate(oldest) if expires > now), len(oldest))
        if expired:
            txn.pop_oldest(RESULTS_LOG, expired)
