"""Lock-free global rate limits and concurrency caps, shared by every worker on every host.

Each decision is one Lua script (no locks, no WATCH loops):

* A **rate limit** is GCRA (the generic cell rate algorithm) on one key holding the
  "theoretical arrival time": allowed calls are spaced ``period / count`` apart, with
  ``burst`` calls of slack. The server's clock decides, so hosts need not agree.
* A **concurrency cap** is a sorted set of holders; at most ``limit`` members.

For a task, the decision and its consequence are one step: a task over its rate is
moved from the worker's in-flight list to the delayed set, due exactly when it may
run; a task finding its cap full is parked in the cap's waiting list, and the release
of a slot moves the oldest waiter back to the front of the queue. Nothing polls or
busy-waits, and neither counts as an error (``total_deferred`` counts them). Slots held
by a worker that dies are freed by the same recovery path that requeues its tasks.
"""
from __future__ import annotations

import re
import threading
import time
import uuid
from typing import Any, Callable

import attrs
import redis

from . import keys
from .connection import UNAVAILABLE, is_out_of_memory, translate_connection_errors
from .exceptions import ConfigurationError, Fenced

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


# Decide whether a claimed task may run now, and if not, move it in the same step.
# A task over the rate is given its own future slot (GCRA scheduling: the theoretical
# arrival time advances for it) and sent to the delayed set due at that slot; when it
# comes back it holds a reservation and runs without asking again. Deferred tasks
# therefore return evenly spaced, never all at once.
# Safe to resend after a lost reply (workers do): a task already holding its slot was
# admitted, and one no longer in the in-flight list was moved by the first call, so
# neither is acted on twice (a resent park used to queue a second copy; both ran).
# KEYS: 1 state hash, 2 in-flight list, 3 delayed sorted set, 4 rate key, 5 slots set,
#       6 slot waiters list, 7 worker slots set, 8 limiters set, 9 total_deferred,
#       10 total_fenced, 11 rate reservations set
# ARGV: 1 epoch, 2 raw task, 3 rate interval ms ('' for none), 4 rate tolerance ms,
#       5 cap limit ('' for none), 6 cap name, 7 slot holder, 8 task id
# Returns: {1} run now | {0, due ms} deferred by the rate | {2} waiting for a slot |
#          {3} not in flight (moved already) | {-1} fenced
ADMIT = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  redis.call('INCR', KEYS[10])
  return {-1}
end
if ARGV[5] ~= '' and redis.call('ZSCORE', KEYS[5], ARGV[7]) then return {1} end
if not redis.call('LPOS', KEYS[2], ARGV[2], 'RANK', -1) then return {3} end
if ARGV[5] ~= '' and redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[5]) then
  redis.call('LREM', KEYS[2], -1, ARGV[2])
  redis.call('RPUSH', KEYS[6], ARGV[2])
  redis.call('SADD', KEYS[8], ARGV[6])
  redis.call('INCR', KEYS[9])
  return {2}
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
if ARGV[3] ~= '' and redis.call('SREM', KEYS[11], ARGV[8]) == 0 then
  local tat = tonumber(redis.call('GET', KEYS[4]) or now)
  if tat < now then tat = now end
  local run_at = math.max(now, tat - tonumber(ARGV[4]))
  local next_tat = tat + tonumber(ARGV[3])
  redis.call('SET', KEYS[4], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now) + 60000)
  if run_at > now then
    redis.call('LREM', KEYS[2], -1, ARGV[2])
    redis.call('ZADD', KEYS[3], string.format('%.3f', run_at / 1000), ARGV[2])
    redis.call('SADD', KEYS[11], ARGV[8])
    redis.call('INCR', KEYS[9])
    return {0, string.format('%.3f', run_at)}
  end
end
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[5], now, ARGV[7])
  redis.call('SADD', KEYS[7], ARGV[6] .. '|' .. ARGV[7])
  redis.call('SADD', KEYS[8], ARGV[6])
end
return {1}
"""

# Free one slot; if it was held, wake the oldest waiter (front of the queue).
# KEYS: 1 slots set, 2 slot waiters list, 3 queue, 4 worker slots set ('' owner: any key)
# ARGV: 1 holder, 2 record in the worker's set (name|holder)
# Returns: 1 if a slot was freed, 0 if it was not held (already freed by a takeover)
RELEASE_SLOT = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SREM', KEYS[4], ARGV[2])
local waiter = redis.call('LPOP', KEYS[2])
if waiter then redis.call('RPUSH', KEYS[3], waiter) end
return 1
"""

# A code-level rate decision without a task: how long to wait (0: go, token taken).
# KEYS: 1 rate key
# ARGV: 1 interval ms, 2 tolerance ms
# Returns: milliseconds to wait before asking again ('0' when allowed)
RATE_ONLY = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allowed_at = tat - tonumber(ARGV[2])
if now < allowed_at then return string.format('%.3f', allowed_at - now) end
local next_tat = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now) + 1000)
return '0'
"""

# A code-level slot: take one if the cap has room (stale holders past their hold time go).
# Fenced like every write made for a worker: a zombie resumed after its takeover (which
# freed its slots) must not take a slot nobody will free. Ages are measured on the
# server's clock, the one that stamped them.
# KEYS: 1 slots set, 2 worker slots set, 3 limiters set, 4 the worker's state hash
# ARGV: 1 limit, 2 holder, 3 cap name, 4 longest hold (ms) before a holder is presumed
#       abandoned, 5 the worker's epoch ('' for code outside a worker)
# Returns: 1 taken, 0 full, -1 fenced
TAKE_SLOT = """
if ARGV[5] ~= '' and redis.call('HGET', KEYS[4], 'epoch') ~= ARGV[5] then return -1 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3] .. '|' .. ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""


# How long code-level limit waits (``with limiter(...)``, ``with cap``) ride out an
# unreachable server before raising BackendUnavailable into the task.
OUTAGE_PATIENCE_S = 60.0


def _patiently(call: Callable[[], Any]) -> Any:
    """``call()``, retried with backoff while the server is unreachable (a restart, a
    failover) or full (maxmemory), for up to OUTAGE_PATIENCE_S: an outage is a pause,
    not a task failure."""
    delay, deadline = 0.02, time.monotonic() + OUTAGE_PATIENCE_S
    while True:
        try:
            return call()
        except redis.RedisError as exc:
            if not (isinstance(exc, UNAVAILABLE) or is_out_of_memory(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(1.0, delay * 2)


@attrs.frozen
class Admission:
    """What ADMIT decided for one task: run it, or it was moved (deferred or waiting)."""

    run: bool
    due_at: float | None = None  # epoch seconds, when deferred by a rate limit
    waiting: bool = False  # parked until a slot frees


@translate_connection_errors
class RedisLimits:
    """Limits over one Redis client (created in the process using it).

    A lost server raises BackendUnavailable, as the state managers do; every task step
    here is safe to resend (workers resend after reconnecting). The code-level waits
    (``wait_for_rate``, ``hold_slot``) ride out an outage of up to ``OUTAGE_PATIENCE_S``.

    Args:
        client: a redis-py client.
        worker_id: the worker these limits act for (slots are recorded in its partition).
        space: the keys of the layout (or shard) the limits live in.
    """

    slot_hold_s = 3600.0  # a code-level slot older than this is presumed abandoned

    def __init__(self, client: redis.Redis, worker_id: str | None = None, *, space: keys.KeySpace = keys.PLAIN) -> None:
        self.redis = client
        self.space = space
        self.worker_id = worker_id
        self.epoch: int | None = None  # the worker's, once fenced: code-level slots check it
        self._admit = client.register_script(ADMIT)
        self._release = client.register_script(RELEASE_SLOT)
        self._rate_only = client.register_script(RATE_ONLY)
        self._take = client.register_script(TAKE_SLOT)

    # -- tasks ---------------------------------------------------------------------------------
    def admit(
        self, worker_id: str, epoch: int, raw: str, task_id: str, rate: Limiter | None, cap: ConcurrencyCap | None
    ) -> Admission:
        """One atomic decision for a claimed task; raises Fenced."""
        reply = self._admit(
            keys=[
                self.space.worker_state_key(worker_id),
                self.space.worker_inflight_key(worker_id),
                self.space.DELAYED,
                self.space.rate_limit_key(rate.name if rate else "-"),
                self.space.slots_key(cap.name if cap else "-"),
                self.space.slot_waiters_key(cap.name if cap else "-"),
                self.space.worker_slots_key(worker_id),
                self.space.LIMITERS,
                self.space.TOTAL_DEFERRED,
                self.space.TOTAL_FENCED,
                self.space.rate_reservations_key(rate.name if rate else "-"),
            ],
            args=[
                epoch,
                raw,
                "" if rate is None else rate.rate.interval_ms,
                0 if rate is None else rate.rate.tolerance_ms,
                "" if cap is None else cap.limit,
                "" if cap is None else cap.name,
                self.holder(worker_id, task_id),
                task_id,
            ],
        )
        code = int(reply[0])
        if code == -1:
            raise Fenced(worker_id, epoch)
        if code == 0:
            return Admission(run=False, due_at=float(reply[1]) / 1000.0)
        if code == 3:
            return Admission(run=False)  # a resent call: the first one moved it
        return Admission(run=False, waiting=True) if code == 2 else Admission(run=True)

    def release(self, cap: ConcurrencyCap, worker_id: str, task_id: str) -> bool:
        """Free the slot a task held and wake the oldest waiter."""
        holder = self.holder(worker_id, task_id)
        return self._free(cap.name, holder, worker_id)

    def release_worker_slots(self, worker_id: str) -> int:
        """Free every slot a dead worker held (part of its takeover). Returns how many."""
        freed = 0
        for record in self.redis.smembers(self.space.worker_slots_key(worker_id)):
            name, _, holder = record.partition("|")
            freed += self._free(name, holder, worker_id)
        return freed

    def fence(self, epoch: int) -> None:
        """Take code-level slots only while ``epoch`` owns the worker's partition."""
        self.epoch = epoch

    @staticmethod
    def holder(worker_id: str, task_id: str) -> str:
        return f"{worker_id}|{task_id}"

    def _free(self, name: str, holder: str, worker_id: str) -> bool:
        return bool(
            self._release(
                keys=[
                    self.space.slots_key(name),
                    self.space.slot_waiters_key(name),
                    self.space.QUEUE,
                    self.space.worker_slots_key(worker_id),
                ],
                args=[holder, f"{name}|{holder}"],
            )
        )

    # -- any code in a worker ----------------------------------------------------------------------
    def wait_for_rate(self, limit: Limiter) -> float:
        """Sleep until ``limit`` allows one call, then take it; returns seconds waited
        (an outage is waited out too, up to OUTAGE_PATIENCE_S, then BackendUnavailable)."""
        waited = 0.0
        while True:
            wait_ms = float(
                _patiently(
                    lambda: self._rate_only(
                        keys=[self.space.rate_limit_key(limit.name)],
                        args=[limit.rate.interval_ms, limit.rate.tolerance_ms],
                    )
                )
            )
            if wait_ms <= 0:
                return waited
            time.sleep(wait_ms / 1000.0)
            waited += wait_ms / 1000.0

    def hold_slot(self, cap: ConcurrencyCap, poll_s: float = 0.01) -> str:
        """Block until a slot of ``cap`` is free, take it, return its holder id. Raises
        Fenced when this worker's partition was taken over meanwhile."""
        owner = self.worker_id or "code"
        holder = f"{owner}|{uuid.uuid4().hex}"
        delay = poll_s
        while True:
            taken = _patiently(
                lambda: self._take(
                    keys=[
                        self.space.slots_key(cap.name),
                        self.space.worker_slots_key(owner),
                        self.space.LIMITERS,
                        self.space.worker_state_key(owner),
                    ],
                    args=[cap.limit, holder, cap.name, self.slot_hold_s * 1000.0, "" if self.epoch is None else self.epoch],
                )
            )
            if taken == -1:
                raise Fenced(owner, self.epoch if self.epoch is not None else -1)
            if taken == 1:
                return holder
            time.sleep(delay)
            delay = min(0.25, delay * 2)

    def free_slot(self, cap: ConcurrencyCap, holder: str) -> None:
        self._free(cap.name, holder, self.worker_id or "code")

    # -- accounting ------------------------------------------------------------------------------
    def waiting(self) -> int:
        """Tasks parked in every cap's waiting list (waiting work, for drains and audits)."""
        names = sorted(self.redis.smembers(self.space.LIMITERS))
        if not names:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.llen(self.space.slot_waiters_key(name))
        return sum(int(n) for n in pipe.execute())


_current: dict[str, Any] = {}
_current_lock = threading.Lock()


def bind(limits: RedisLimits | None) -> None:
    """Set the limits code-level ``with limiter(...)`` uses in this process (workers do)."""
    with _current_lock:
        _current["limits"] = limits


def current_limits() -> RedisLimits:
    limits = _current.get("limits")
    if limits is None:
        raise ConfigurationError("limiters used in code need a worker (or bind(RedisLimits(client)) first)")
    return limits
