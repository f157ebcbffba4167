"""Leased, fenced redis-py locks and their wait policies, for the lock-based baseline.

One critical section of :class:`~orchestrator_mp.state.locked.RedisEnabledStateManager`::

    acquire  FENCED_ACQUIRE.lua   SET lock token NX PX lease; INCR fence → fencing token
             (on failure: wait per the policy and try again, until blocking_timeout)
    read     plain reads, pipelined, while holding the lock(s)
    write    FENCED_APPLY.lua     every fence still holds our token? apply all writes : none
    release  redis-py's LUA_RELEASE_SCRIPT (delete the lock only if it is still ours)

Both scripts are safe to resend: a patient client (the default) resends a command
whose reply was lost to a reconnect. A resent acquire that had landed returns the
token it took; a resent write that had landed finds its tokens in the lock's
``applied:`` marker and is not applied twice.

The lease (``timeout``) is far longer than any critical section, but a holder can
still lose it (a stopped process, a swapped-out machine). A new holder's acquire
bumps the fence, so the old holder's write finds another token and is refused as a
whole: a holder that lost its lease cannot write (Kleppmann's fencing token).

Wait policies: redis-py's ``Lock.acquire`` sleeps a fixed ``sleep`` (100 ms by
default) between attempts. :data:`TUNED` instead backs off exponentially from
0.5 ms (x4 per attempt, capped at 100 ms, full jitter), which is what a careful
engineer would configure after measuring; :data:`LIBRARY_DEFAULT` keeps the
library's loop and is reported as such.
"""
from __future__ import annotations

import random
import time
import uuid
from typing import TYPE_CHECKING, Any, ClassVar, Sequence, cast

import attrs
import redis
from redis.exceptions import LockError

from .. import keys
from ..exceptions import LockTimeout

if TYPE_CHECKING:
    from redis.commands.core import Script
    from redis.typing import EncodableT

# The most arguments one write of a critical section may carry (larger ones are split).
WRITE_ARGS_MAX = 1000

# Take a lock and, in the same step, its next fencing token.
# KEYS: 1 lock, 2 fence counter
# ARGV: 1 token (identifies the holder, for release), 2 lease in ms
# Returns: the fencing token (>= 1), or 0 when the lock is held by someone else
# (a resent call that had taken the lock finds its own token and returns its fence)
FENCED_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return tonumber(redis.call('GET', KEYS[2])) end
return 0
"""

# Apply a batch of writes only if every fence still holds the caller's token:
# the writes of one critical section land together or not at all, and once.
# KEYS: 1..F fence counters, F+1 the applied marker of the first lock, then every key
#       the writes touch
# ARGV: 1 F, 2..F+1 the tokens, F+2 the marker's lifetime in ms, then per write:
#       command, key index (into KEYS), argument count N, N arguments
# Returns: 1 when applied, 2 when these tokens' writes were applied already (a resent
#          call), 0 when a fence moved on (a lease was lost; nothing written)
# Every write is checked (its argument count within what Lua can unpack) before the
# first one lands: Redis keeps a script's earlier writes when a later one fails.
FENCED_APPLY = f"""
local WRITE_ARGS_MAX = {WRITE_ARGS_MAX}
""" + """
local nf = tonumber(ARGV[1])
local stamp = table.concat(ARGV, ':', 2, nf + 1)
if redis.call('GET', KEYS[nf + 1]) == stamp then return 2 end
for i = 1, nf do
  if redis.call('GET', KEYS[i]) ~= ARGV[i + 1] then return 0 end
end
local i = nf + 3
while i <= #ARGV do
  local nargs = tonumber(ARGV[i + 2])
  if not nargs or nargs > WRITE_ARGS_MAX or i + 2 + nargs > #ARGV then
    return redis.error_reply('ERR a write takes at most ' .. WRITE_ARGS_MAX .. ' arguments, got ' .. tostring(ARGV[i + 2]))
  end
  i = i + 3 + nargs
end
i = nf + 3
while i <= #ARGV do
  local nargs = tonumber(ARGV[i + 2])
  redis.call(ARGV[i], KEYS[tonumber(ARGV[i + 1])], unpack(ARGV, i + 3, i + 2 + nargs))
  i = i + 3 + nargs
end
redis.call('SET', KEYS[nf + 1], stamp, 'PX', ARGV[nf + 2])
return 1
"""
# How long a write's marker outlives it: longer than a patient client keeps resending.
APPLIED_MARKER_MS = 60_000

# A write inside a critical section: (command, key, *arguments).
Write = tuple[Any, ...]


@attrs.frozen
class WaitPolicy:
    """How an acquirer waits for a held lock.

    ``library_default`` uses redis-py's own loop (a fixed ``Lock.sleep``, 100 ms);
    otherwise the wait before attempt n+1 is uniform in [d * (1 - jitter), d] with
    d = min(cap_s, first_s * factor**n): exponential backoff with jitter.
    """

    name: str
    first_s: float = 0.0005
    factor: float = 2.0
    cap_s: float = 0.008
    jitter: float = 0.5
    library_default: bool = False


# Tuned on the 2-core development machine with benchmarks/sweep_wait_policy.py
# (8 processes oversubscribe the CPUs): short caps keep every waiter polling and
# starve the holder; growing fast (x4) with full jitter to a 100 ms cap keeps few
# waiters awake yet retries soon after a short critical section. It beat the other
# backoff shapes tried and the library default at 4 and 8 processes. See README.
TUNED = WaitPolicy("tuned", first_s=0.0005, factor=4.0, cap_s=0.1, jitter=1.0)
LIBRARY_DEFAULT = WaitPolicy("default", library_default=True)
WAIT_POLICIES = {policy.name: policy for policy in (TUNED, LIBRARY_DEFAULT)}


@attrs.define
class LockStats:
    """What acquiring cost: attempts, waits, timeouts and lost leases.

    ``samples`` keeps each acquire's wait (seconds) and attempts when
    ``record_samples`` is on (benchmarks); otherwise only totals are kept, so a
    long-running worker does not grow a list forever.
    """

    record_samples: bool = False
    acquires: int = 0
    attempts: int = 0
    wait_s: float = 0.0
    timeouts: int = 0
    lost_leases: int = 0
    waits: list[float] = attrs.field(factory=list)
    attempts_per_acquire: list[int] = attrs.field(factory=list)

    def record(self, waited_s: float, attempts: int) -> None:
        self.acquires += 1
        self.attempts += attempts
        self.wait_s += waited_s
        if self.record_samples:
            self.waits.append(waited_s)
            self.attempts_per_acquire.append(attempts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "acquires": self.acquires,
            "attempts": self.attempts,
            "wait_s": self.wait_s,
            "timeouts": self.timeouts,
            "lost_leases": self.lost_leases,
            "waits": list(self.waits),
        }


class FencedLock(redis.lock.Lock):
    """redis-py's Lock whose acquire also takes a fencing token (one round trip).

    Everything else (token per holder, release and extend scripts, the blocking
    loop used by the default policy) is the library's.
    """

    lua_fenced_acquire: ClassVar[Script | None] = None
    # redis-py's Optional[Number]s, always given here (lease_s, blocking_timeout_s):
    timeout: float
    blocking_timeout: float

    def __init__(self, client: redis.Redis, name: str, *, lease_s: float, blocking_timeout_s: float) -> None:
        self.fence_name = keys.fence_key(name)
        self.fence = 0
        self.attempts = 0
        super().__init__(client, name, timeout=lease_s, blocking_timeout=blocking_timeout_s, thread_local=False)

    def acquire(
        self,
        sleep: float | None = None,
        blocking: bool | None = None,
        blocking_timeout: float | None = None,
        token: str | None = None,
    ) -> bool:
        """redis-py's acquire, with a random token by default. The library draws tokens
        from ``uuid1``, which repeats across forked processes wherever libuuid is not
        multiprocess-safe (measured: ~1% duplicates among 4 forked workers), and two
        holders sharing a token would each take the other's lock for its own."""
        token = uuid.uuid4().hex if token is None else token
        acquired: bool = super().acquire(sleep, blocking, blocking_timeout, token)
        return acquired

    def register_scripts(self) -> None:
        super().register_scripts()
        cls = self.__class__
        if cls.lua_fenced_acquire is None:
            cls.lua_fenced_acquire = self.redis.register_script(FENCED_ACQUIRE)

    def do_acquire(self, token: str) -> bool:
        self.attempts += 1
        script = cast("Script", self.lua_fenced_acquire)  # set by register_scripts, which Lock.__init__ calls
        fence = script(
            keys=[self.name, self.fence_name], args=[token, int(self.timeout * 1000)], client=self.redis
        )
        if fence:
            self.fence = int(fence)
            return True
        return False


def acquire(lock: FencedLock, policy: WaitPolicy, stats: LockStats) -> None:
    """Take ``lock`` waiting per ``policy``; raises LockTimeout after its blocking timeout."""
    started = time.perf_counter()
    if policy.library_default:
        ok = lock.acquire(blocking=True)
    else:
        ok = _acquire_with_backoff(lock, policy, started + lock.blocking_timeout)
    waited = time.perf_counter() - started
    stats.record(waited, lock.attempts)
    if not ok:
        stats.timeouts += 1
        raise LockTimeout(lock.name, waited)


def _acquire_with_backoff(lock: FencedLock, policy: WaitPolicy, deadline: float) -> bool:
    delay = policy.first_s
    while not lock.acquire(blocking=False):
        left = deadline - time.perf_counter()
        if left <= 0:
            return False
        time.sleep(min(left, random.uniform(delay * (1 - policy.jitter), delay)))
        delay = min(policy.cap_s, delay * policy.factor)
    return True


def release(lock: FencedLock) -> None:
    """Release ``lock``; a lease that already ran out is not an error here (its writes
    were refused by the fence if anyone else took the lock meanwhile)."""
    try:
        lock.release()
    except LockError:
        pass


def fenced_args(held: Sequence[FencedLock], writes: Sequence[Write]) -> tuple[list[str], list[EncodableT]]:
    """KEYS and ARGV of one FENCED_APPLY call (``held`` is not empty)."""
    key_list = [*(lock.fence_name for lock in held), keys.applied_key(held[0].name)]
    index: dict[str, int] = {}
    args: list[EncodableT] = [len(held), *(lock.fence for lock in held), APPLIED_MARKER_MS]
    for command, key, *rest in writes:
        if key not in index:
            key_list.append(key)
            index[key] = len(key_list)
        args.extend((command, index[key], len(rest), *rest))
    return key_list, args
