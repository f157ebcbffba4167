"""Rate limits and concurrency caps as users declare them: ``limiter("github", "5000/h")``,
``concurrency_limit("db", 10)``, passed to ``@task(rate_limit=..., concurrency=...)`` or
used with ``with`` inside any code a worker runs.

They are shared by every worker on every host. How the state enforces them lock-free
(one Lua script per decision, on the server's clock) is
:mod:`orchestrator_mp.state.redislimits`; this module only declares them, and holds the
limits a worker process binds for code-level use.
"""
from __future__ import annotations

import re
import threading
from typing import Protocol

import attrs

from .exceptions import ConfigurationError

_held = threading.local()  # holders of code-level slots, per thread, innermost last
_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*$")


@attrs.frozen
class Rate:
    """``count`` calls per ``period_s`` seconds, with ``burst`` calls of slack."""

    count: int
    period_s: float
    burst: int = 1

    @property
    def interval_ms(self) -> float:
        return self.period_s * 1000.0 / self.count

    @property
    def tolerance_ms(self) -> float:
        return self.interval_ms * (self.burst - 1)


def parse_rate(text: str, burst: int = 1) -> Rate:
    """``"30/m"``, ``"5000/h"``, ``"10/s"``, ``"100/10s"`` (units ms, s, m, h, d)."""
    match = _RATE.match(text or "")
    if not match or match.group(3) not in _UNITS or int(match.group(1)) < 1:
        raise ConfigurationError(f"rate must look like 30/m, 5000/h or 100/10s, got {text!r}")
    multiplier = float(match.group(2)) if match.group(2) else 1.0
    if multiplier <= 0 or burst < 1:
        raise ConfigurationError(f"rate period and burst must be positive, got {text!r} burst {burst}")
    return Rate(count=int(match.group(1)), period_s=multiplier * _UNITS[match.group(3)], burst=burst)


@attrs.frozen
class Limiter:
    """A named rate limit shared across workers and hosts (``limiter("github", "5000/h")``)."""

    name: str
    rate: Rate

    def __enter__(self) -> "Limiter":
        current_limits().wait_for_rate(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


@attrs.frozen
class ConcurrencyCap:
    """At most ``limit`` holders of a named resource at once, across workers and hosts."""

    name: str
    limit: int

    def __enter__(self) -> "ConcurrencyCap":
        stack = _held.__dict__.setdefault("stack", [])
        stack.append(current_limits().hold_slot(self))
        return self

    def __exit__(self, *exc_info: object) -> None:
        current_limits().free_slot(self, _held.stack.pop())


def limiter(name: str, rate: str, burst: int = 1) -> Limiter:
    """A named, shared rate limit: pass it to ``@task(rate_limit=...)`` or use ``with``."""
    return Limiter(name=name, rate=parse_rate(rate, burst))


def concurrency_limit(name: str, limit: int) -> ConcurrencyCap:
    """A named, shared concurrency cap: pass it to ``@task(concurrency=...)`` or use ``with``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"concurrency limit must be an integer >= 1, got {limit!r}")
    return ConcurrencyCap(name=name, limit=limit)


class CodeLimits(Protocol):
    """What ``with limiter(...)`` and ``with cap`` need from the state a worker runs on."""

    def wait_for_rate(self, limit: Limiter) -> float: ...

    def hold_slot(self, cap: ConcurrencyCap, poll_s: float = 0.01) -> str: ...

    def free_slot(self, cap: ConcurrencyCap, holder: str) -> None: ...


_current: dict[str, CodeLimits | None] = {}
_current_lock = threading.Lock()


def bind(limits: CodeLimits | None) -> None:
    """Set the limits code-level ``with limiter(...)`` uses in this process (workers do)."""
    with _current_lock:
        _current["limits"] = limits


def current_limits() -> CodeLimits:
    limits = _current.get("limits")
    if limits is None:
        raise ConfigurationError("limiters used in code need a worker (or bind(RedisLimits(client)) first)")
    return limits
