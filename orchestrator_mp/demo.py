"""The demo task of ``run --demo`` and ``bench``: sleep, and sometimes fail on purpose.

Defined here, registered by whoever runs it (:func:`register_demo`: the command line
for every command, ``bench`` before its runs), never at import: importing the
package leaves the application's registry empty.
"""
from __future__ import annotations

import math
import time

from .limits import limiter
from .registry import register_task

DEMO_TASK = "demo"
LIMITED_DEMO_TASK = "demo.limited"


class DemoFailure(RuntimeError):
    """Raised by the demo task for its deterministic share of failures."""


def should_fail(index: int, fail_rate: float) -> bool:
    """Exactly floor(count * rate) of the indexes 0..count-1 fail, spread evenly."""
    return math.floor((index + 1) * fail_rate) > math.floor(index * fail_rate)


def demo(index: int, ms: float = 0.0, fail_rate: float = 0.0) -> int:
    """Sleep ``ms`` milliseconds; fail when ``index`` falls in the failing share."""
    if ms > 0:
        time.sleep(ms / 1000.0)
    if should_fail(index, fail_rate):
        raise DemoFailure(f"demo task {index} failed on purpose (fail rate {fail_rate})")
    return index


def register_demo() -> str:
    """Register :func:`demo` as ``demo`` (again is fine); returns the name. Call before forking."""
    register_task(DEMO_TASK, demo)
    return DEMO_TASK


def register_limited_demo(rate: str) -> str:
    """Register the demo task again under ``demo.limited``, sharing one ``rate`` limit
    across all workers (``run --demo-rate``); returns its name. Call before forking."""
    register_task(LIMITED_DEMO_TASK, demo, rate_limit=limiter("demo", rate))
    return LIMITED_DEMO_TASK
