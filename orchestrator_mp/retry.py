"""What happens to a failed task: run again later (backoff with jitter) or dead-letter.

The same policy serves failures reported by a worker and time limits enforced by
the parent, so a task's fate does not depend on who noticed the failure.
"""
from __future__ import annotations

import random
from typing import Any

from .config import Settings
from .exceptions import UnknownTaskError
from .models import TASK_ERROR, TIMEOUT, Outcome, Task
from .registry import get_spec

# Only these failures can succeed on another try; a bad payload, an unknown name
# or an unencodable result fails the same way every time.
RETRYABLE = frozenset({TASK_ERROR, TIMEOUT})


def _policy(task: Task, settings: Settings, field: str) -> Any:
    """A policy value: the task's own, else its registration's, else the Settings default."""
    own = getattr(task, field)
    if own is not None:
        return own
    try:
        registered = getattr(get_spec(task.name), field)
    except UnknownTaskError:
        registered = None
    return registered if registered is not None else getattr(settings, field)


def max_retries_for(task: Task, settings: Settings) -> int:
    """Failures of this task retried before it is dead-lettered."""
    retries: int = _policy(task, settings, "max_retries")
    return retries


def time_limit_for(task: Task, settings: Settings) -> float | None:
    """This task's time limit in seconds (None: none)."""
    limit: float | None = _policy(task, settings, "time_limit_s")
    return limit


def backoff_delay(retries: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": between half and all of base * 2**retries."""
    ceiling: float = min(settings.retry_backoff_max_s, settings.retry_backoff_s * (2 ** min(retries, 32)))
    jitter: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


def failure(
    raw: str,
    task: Task | None,
    category: str,
    message: str,
    settings: Settings,
    *,
    traceback: str = "",
    error_type: str = "",
    wait_ms: float = 0.0,
    run_ms: float = 0.0,
) -> Outcome:
    """The Outcome of a failed run, carrying the retry (raw + due time) if one is due."""
    retry_raw, retry_in_s = "", 0.0
    if task is not None and category in RETRYABLE and task.retries < max_retries_for(task, settings):
        retry_raw = task.for_retry().to_json()
        # Relative: the step that records the failure adds it to the server's clock.
        retry_in_s = backoff_delay(task.retries, settings)
    return Outcome(
        raw=raw,
        task_id=task.id if task else "",
        name=task.name if task else "",
        ok=False,
        category=category,
        message=message,
        traceback=traceback,
        error_type=error_type or category,
        wait_ms=wait_ms,
        run_ms=run_ms,
        retry_raw=retry_raw,
        retry_in_s=retry_in_s,
        want_result=bool(task and task.want_result),
    )
