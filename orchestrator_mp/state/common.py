"""What the Lua scripts compute, in Python: shared by the lock-based baseline and the
file fallback so that all three implementations store the same bytes.

Each helper names the script whose behaviour it mirrors; a change to a script in
``scripts.py`` must be made here too (the contract suite runs all three against the
same expectations).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

from ..exceptions import ConfigurationError
from ..models import Outcome, dumps

RESERVED_FIELDS = frozenset({"version", "epoch"})

# Lua patterns of RECLAIM / CLAIM, as Python regexes ('.' of Lua also matches newlines).
_CRASHES = re.compile(r'^\{"crashes":(\d+),(.*)$', re.DOTALL)
_TASK_ID = re.compile(r'"id":"([^"]*)"')
_NAME = re.compile(r'"name":"([^"]*)"')


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
    reserved = RESERVED_FIELDS.intersection(mapping)
    if reserved:
        raise ConfigurationError(f"fields {sorted(reserved)} are managed by the state manager")
    return {str(field): encode_value(value) for field, value in mapping.items()}


def fair_share(max_count: int, depth: int, divisor: int) -> int:
    """How many tasks one claim takes (CLAIM): min(batch, ceil(depth / divisor))."""
    return max(0, min(max_count, math.ceil(depth / max(1, divisor))))


def task_id_of(raw: str, default: str = "") -> str:
    match = _TASK_ID.search(raw)
    return match.group(1) if match else default


def name_of(raw: str) -> str:
    match = _NAME.search(raw)
    return match.group(1) if match else ""


def requeue_or_poison(raw: str, max_crashes: int) -> tuple[str | None, str, str]:
    """RECLAIM's decision for one in-flight entry.

    Returns ``(requeued raw, "", "")`` with the crash count raised, or ``(None,
    category, message)`` when the entry must be dead-lettered instead.
    """
    match = _CRASHES.match(raw)
    if not match:
        return None, "bad_payload", "in-flight entry is not a task"
    count = int(match.group(1)) + 1
    if count >= max_crashes:
        return None, "poison", f"crashed {count} workers (limit {max_crashes})"
    return f'{{"crashes":{count},{match.group(2)}', "", ""


def dead_letter_entry(
    raw: str, task_id: str, name: str, category: str, message: str, traceback: str, worker_id: str, failed_at: float
) -> str:
    """The JSON stored in the dead-letter list (same members as SETTLE / RECLAIM)."""
    return dumps(
        {
            "task": raw,
            "task_id": task_id,
            "name": name,
            "category": category,
            "message": message,
            "traceback": traceback,
            "worker": worker_id,
            "failed_at": failed_at,
        }
    )


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


def ms(value: float) -> str:
    """Milliseconds as SETTLE's callers send them."""
    return f"{value:.3f}"
