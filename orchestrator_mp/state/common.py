"""What the Lua scripts compute, in Python: shared by the lock-based baseline and the
file fallback, so that all three implementations make the same changes.

Here: the small decisions the scripts make (crash counts, suspects, fair shares,
matching outcomes to in-flight entries) and the base class of the two Python backends.
The planners built on them, one per script, are in :mod:`.plans`. Each helper names
the script it mirrors; a change to a script in ``scripts.py`` must be made here too
(the contract suite runs every backend against the same expectations).
"""
from __future__ import annotations

import abc
import math
import re
from collections import Counter
from typing import Any, Iterable, Sequence

from .. import keys
from ..config import MAX_BATCH_SIZE, MAX_STATE_FIELDS
from ..exceptions import ConfigurationError
from ..keys import SUBMIT_MARKER_TTL_S
from ..models import BAD_PAYLOAD, POISON, Outcome, partition_key_of
from .base import StateManager, requeueable_task

RESERVED_FIELDS = frozenset({"version", "epoch"})

# Lua patterns of RECLAIM / CLAIM, as Python regexes ('.' of Lua also matches newlines).
_CRASHES = re.compile(r'^\{"crashes":(\d+),(.*)$', re.DOTALL)
_TASK_ID = re.compile(r'"id":"([^"]*)"')
_NAME = re.compile(r'"name":"([^"]*)"')
# A task whose submitter waits for its outcome (RECLAIM stores results for these).
WANTS_RESULT = '"result":true'


def encode_value(value: object) -> str:
    """A value as redis-py would send it: str as is, numbers by ``repr``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    message = f"state values must be str, int or float, got {type(value).__name__}: {value!r}"
    raise ConfigurationError(message)


def checked_fields(mapping: dict[str, object]) -> dict[str, str]:
    """The fields of an update, encoded; refuses an empty update and reserved fields (UPDATE_STATE)."""
    if not mapping:
        raise ConfigurationError("update_worker_state needs at least one field")
    if len(mapping) > MAX_STATE_FIELDS:
        message = f"update_worker_state sets at most {MAX_STATE_FIELDS} fields at once, got {len(mapping)}"
        raise ConfigurationError(message)
    reserved = RESERVED_FIELDS.intersection(mapping)
    if reserved:
        raise ConfigurationError(f"fields {sorted(reserved)} are managed by the state manager")
    return {str(field): encode_value(value) for field, value in mapping.items()}


def checked_claim_count(max_count: int) -> int:
    """A claim's size, refused when no batch may be that large (CLAIM refuses it too)."""
    if isinstance(max_count, bool) or not isinstance(max_count, int) or not 0 <= max_count <= MAX_BATCH_SIZE:
        message = f"a claim takes 0 to {MAX_BATCH_SIZE:,} tasks (batch_size's bound), got {max_count!r}"
        raise ConfigurationError(message)
    return max_count


def fair_share(max_count: int, depth: int, divisor: int) -> int:
    """How many tasks one claim takes (CLAIM): min(batch, ceil(depth / divisor))."""
    return max(0, min(max_count, math.ceil(depth / max(1, divisor))))


def is_suspect(raw: str) -> bool:
    """CLAIM's test: a task that crashed a worker before (crash count > 0)."""
    match = _CRASHES.match(raw)
    return match is not None and match.group(1) != "0"


def claimable(candidates: Sequence[str]) -> list[str]:
    """What CLAIM keeps of the oldest tasks it took: a suspect travels alone, so the
    claim stops before the first suspect, or is that suspect alone when it comes first."""
    for index, raw in enumerate(candidates):
        if is_suspect(raw):
            return list(candidates[: index or 1])
    return list(candidates)


def task_id_of(raw: str, default: str = "") -> str:
    match = _TASK_ID.search(raw)
    return match.group(1) if match else default


def name_of(raw: str) -> str:
    match = _NAME.search(raw)
    return match.group(1) if match else ""


def requeue_or_poison(raw: str, max_crashes: int, increment: int = 1) -> tuple[str | None, str, str]:
    """RECLAIM's decision for one in-flight entry.

    Returns ``(requeued raw, "", "")`` with the crash count raised by ``increment``,
    or ``(None, category, message)`` when the entry must be dead-lettered instead.
    """
    match = _CRASHES.match(raw)
    if not match:
        return None, BAD_PAYLOAD, "in-flight entry is not a task"
    count = int(match.group(1)) + increment
    if count >= max_crashes:
        return None, POISON, f"crashed {count} workers (limit {max_crashes})"
    return f'{{"crashes":{count},{match.group(2)}', "", ""


def present(stored: Iterable[str], wanted: Sequence[str]) -> list[str]:
    """The members of ``wanted`` found in ``stored``, in ``wanted``'s order; each stored
    occurrence matches once (what a series of ``LREM key 1 value`` removes)."""
    remaining = Counter(stored)
    found = []
    for value in wanted:
        if remaining[value] > 0:
            remaining[value] -= 1
            found.append(value)
    return found


def split_settled(inflight: Sequence[str], outcomes: Sequence[Outcome]) -> tuple[list[Outcome], list[Outcome], int]:
    """SETTLE's bookkeeping: which outcomes are still in flight (counted) and how many
    are duplicates. Returns ``(completed, failed, duplicates)``; completions are
    matched first, then failures, each removing one occurrence."""
    remaining = Counter(inflight)
    completed: list[Outcome] = []
    failed: list[Outcome] = []
    duplicates = 0
    for outcome in [o for o in outcomes if o.ok] + [o for o in outcomes if not o.ok]:
        if remaining[outcome.raw] > 0:
            remaining[outcome.raw] -= 1
            (completed if outcome.ok else failed).append(outcome)
        else:
            duplicates += 1
    return completed, failed, duplicates


def retry_pairs(entries: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """DLQ_RETRY's arguments: (the stored dead-letter entry, the fresh task to queue)."""
    pairs = []
    for entry in entries:
        fresh = requeueable_task(entry)
        if fresh is not None:
            pairs.append((entry["raw"], fresh))
    return pairs


def due_spec(due_at: float | None, delay_s: float | None) -> str:
    """SUBMIT's ``when`` argument: '' (now), '+S' (S seconds on the server's clock) or
    an epoch time. Refuses both at once, and anything that is not a finite number."""
    if due_at is not None and delay_s is not None:
        raise ConfigurationError("give due_at or delay_s, not both")
    for name, value in (("due_at", due_at), ("delay_s", delay_s)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise ConfigurationError(f"{name} must be a finite number of seconds, got {value!r}")
    if delay_s is not None:
        return f"+{max(0.0, float(delay_s))!r}"
    return "" if due_at is None else repr(float(due_at))


def due_time(due_at: float | None, delay_s: float | None, now: float) -> float | None:
    """Where :func:`due_spec` puts tasks, for the states that compute in Python."""
    due_spec(due_at, delay_s)  # the same refusals
    if delay_s is not None:
        return now + max(0.0, float(delay_s))
    return due_at


def ms(value: float) -> str:
    """Milliseconds as SETTLE's callers send them."""
    return f"{value:.3f}"


class MirroredStateManager(StateManager):
    """Base of the backends that compute in Python what the scripts compute (the
    lock-based baseline, the file fallback): their settings and the calls that only
    shape arguments. Rate limits and concurrency caps are not supported (``limits()``
    is None): a limited task fails with a clear message instead of running unlimited.
    Neither are partition keys (per-key ordering): submitting a keyed task raises.

    Args:
        completions_maxlen: approximate cap of ``work_completions`` / ``work_errors``.
        events_maxlen: approximate cap of the other streams.
        worker_lease_s: how long a worker's lease lasts without a heartbeat.
        result_ttl_s: how long a stored task result is kept.
    """

    submit_marker_ttl_s = SUBMIT_MARKER_TTL_S

    def __init__(
        self, *, completions_maxlen: int, events_maxlen: int, worker_lease_s: float, result_ttl_s: float
    ) -> None:
        self.completions_maxlen = completions_maxlen
        self.events_maxlen = events_maxlen
        self.worker_lease_s = worker_lease_s
        self.worker_lease_ms = max(1, int(worker_lease_s * 1000))
        self.result_ttl_s = result_ttl_s
        self.result_ttl_ms = max(1, int(result_ttl_s * 1000))

    def refuse_partition_keys(self, raw_tasks: Sequence[str]) -> None:
        """Per-key ordering lives in the lock-free scripts only: say so, never run keyed
        tasks unordered."""
        if any(partition_key_of(raw) is not None for raw in raw_tasks):
            message = f"partition keys (per-key ordering) need the lock-free state, not {self.kind!r}"
            raise ConfigurationError(message)

    def maxlen(self, stream: str) -> int:
        """The approximate cap of ``stream``."""
        return self.completions_maxlen if stream in (keys.WORK_COMPLETIONS, keys.WORK_ERRORS) else self.events_maxlen

    def update_worker_field(
        self, worker_id: str, field: str, value: object, *, epoch: int | None = None, pipeline: Any = None
    ) -> int:
        """As the contract says; a ``pipeline`` is accepted and the update made at once
        (a read-modify-write under a lock cannot wait in a caller's pipeline)."""
        version = self._do_update_state(worker_id, checked_fields({field: value}), None, epoch)
        return 0 if pipeline is not None else version

    def update_worker_state(
        self,
        worker_id: str,
        mapping: dict[str, object],
        expected_version: int | None = None,
        *,
        epoch: int | None = None,
    ) -> bool:
        return self._do_update_state(worker_id, checked_fields(mapping), expected_version, epoch) != 0

    @abc.abstractmethod
    def _do_update_state(
        self, worker_id: str, fields: dict[str, str], expected_version: int | None, epoch: int | None
    ) -> int:
        """One UPDATE_STATE step with checked fields: the new version, or 0 (stale)."""
