"""Every Redis key and stream name, and the builders for per-worker keys; nothing else.

Per-worker keys keep the worker id inside literal braces (``worker:{w}:state``):
the braces are a Redis Cluster hash tag, so all of one worker's partition lives
in one slot and every atomic step on it is a single-slot operation.

The README's "Key schema" table documents each key's type, writer and operations.
"""
from __future__ import annotations

from typing import Any, Callable

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# -- global registration ---------------------------------------------------------------
ACTIVE_WORKERS = "active_workers"  # set: ids of live partition owners
KNOWN_WORKERS = "known_workers"  # set: every partition ever registered (sums, sweeps)

# -- global counters (names carried over from the design this replaces) ----------------
TOTAL_WORK_CREATED = "total_work_created"
TOTAL_WORK_COMPLETED = "total_work_completed"
TOTAL_ERRORS = "total_errors"
TOTAL_DEAD_LETTERED = "total_dead_lettered"
TOTAL_FENCED = "total_fenced"
TOTAL_DUPLICATES = "total_duplicates"
TOTAL_REQUEUED = "total_requeued"  # in-flight tasks returned to the queue by a takeover
TOTAL_RETRIED = "total_retried"  # failures scheduled to run again (backoff)
TOTAL_DLQ_RETRIED = "total_dlq_retried"  # dead letters sent back to the queue by hand
TOTAL_DLQ_PURGED = "total_dlq_purged"  # dead letters discarded by hand
TOTAL_FOREIGN = "total_foreign"  # queue entries that were never submitted as tasks
TOTAL_CANCELLED = "total_cancelled"  # queued tasks withdrawn before any worker claimed them
TOTAL_DEFERRED = "total_deferred"  # tasks put off by a rate limit or a full concurrency cap
# A finished partition is retired after a while: its counters fold into these sums and
# its keys go, so a long-lived database does not grow with every worker that ever ran.
TOTAL_RETIRED = "total_retired"  # partitions retired
RETIRED_COMPLETED = "retired_completed"  # completions counted by partitions since retired
RETIRED_ERRORS = "retired_errors"  # errors counted by partitions since retired

COUNTERS = (
    TOTAL_WORK_CREATED,
    TOTAL_WORK_COMPLETED,
    TOTAL_ERRORS,
    TOTAL_DEAD_LETTERED,
    TOTAL_FENCED,
    TOTAL_DUPLICATES,
    TOTAL_REQUEUED,
    TOTAL_RETRIED,
    TOTAL_DLQ_RETRIED,
    TOTAL_DLQ_PURGED,
    TOTAL_FOREIGN,
    TOTAL_CANCELLED,
    TOTAL_DEFERRED,
    TOTAL_RETIRED,
    RETIRED_COMPLETED,
    RETIRED_ERRORS,
)

# -- queues -----------------------------------------------------------------------------
QUEUE = "queue:pending"  # list: JSON tasks; LPUSH to submit, claimed from the right
DEAD_LETTER = "queue:dead_letter"  # list: JSON {task, category, message, ...}
DELAYED = "queue:delayed"  # sorted set: JSON tasks scored by the time they become due
LANE_WAITING = "queue:lane_waiting"  # string gauge: keyed tasks waiting behind their predecessors


def lane_key(partition_key: str) -> str:
    """List: tasks of one partition key waiting (in order) for their predecessor to finish."""
    return f"lane:{partition_key}"


def lane_owner_key(partition_key: str) -> str:
    """String: set while one task of the key is queued, in flight or waiting for a retry."""
    return f"lane:{partition_key}:busy"


def result_key(task_id: str) -> str:
    """One-element list with a TTL: the final outcome of a task whose submitter wants it.

    A list so waiters can block on it without consuming it (BLMOVE onto itself).
    """
    return f"result:{task_id}"


# How long a submitted batch is remembered: a client resends a lost reply within
# seconds (a patient client ~15 s, a failover ~30 s); an hour left a key per submission
# in memory for an hour (issue 13: a long-lived database must stay bounded).
SUBMIT_MARKER_TTL_S = 300


def submit_marker_key(batch_id: str) -> str:
    """String with a TTL: marks a submitted batch so a retried submission is not applied twice."""
    return f"submitted:{batch_id}"


# -- limits (rate limits and concurrency caps) -------------------------------------------------
LIMITERS = "limiters"  # set: names of concurrency caps (their waiting lists count as waiting work)


def rate_limit_key(name: str) -> str:
    """String, PX expiry: the GCRA "theoretical arrival time" (ms) of a rate limiter."""
    return f"limit:rate:{name}"


def rate_reservations_key(name: str) -> str:
    """Set: ids of deferred tasks holding a future slot of a rate limiter."""
    return f"limit:reserved:{name}"


def slots_key(name: str) -> str:
    """Sorted set: current holders (``worker|task``) of a concurrency cap, scored by time."""
    return f"limit:slots:{name}"


def slot_waiters_key(name: str) -> str:
    """List: raw tasks waiting for a slot of a concurrency cap; a release wakes the oldest."""
    return f"limit:waiting:{name}"


# -- streams (append-only, capped with MAXLEN ~) ------------------------------------------
WORK_COMPLETIONS = "work_completions"
WORK_ERRORS = "work_errors"
WORKER_EVENTS = "stream:worker_events"
EVENTS = "events:stream"
METRICS = "metrics:stream"

STREAMS = (EVENTS, METRICS, WORKER_EVENTS, WORK_COMPLETIONS, WORK_ERRORS)


# -- one worker's partition ---------------------------------------------------------------
def _worker_key(worker_id: str, suffix: str) -> str:
    return f"worker:{{{worker_id}}}:{suffix}"


def worker_state_key(worker_id: str) -> str:
    """Hash: status, current_task, last_activity, pid, host, started_at, version, epoch."""
    return _worker_key(worker_id, "state")


def worker_inflight_key(worker_id: str) -> str:
    """List: the raw JSON of every task this worker has claimed and not yet settled."""
    return _worker_key(worker_id, "inflight")


def worker_completed_key(worker_id: str) -> str:
    """String counter: tasks this worker completed (counted once each)."""
    return _worker_key(worker_id, "completed")


def worker_errors_key(worker_id: str) -> str:
    """String counter: task failures recorded by this worker."""
    return _worker_key(worker_id, "errors")


def worker_slots_key(worker_id: str) -> str:
    """Set: ``name|holder`` of every concurrency slot the worker holds (freed at takeover)."""
    return _worker_key(worker_id, "slots")


def worker_lease_key(worker_id: str) -> str:
    """String with a PX expiry, renewed by the worker's heartbeat: gone means presumed dead."""
    return _worker_key(worker_id, "lease")


def counter_key(name: str) -> str:
    """Counters live under their own names, as in the design this replaces."""
    return name


# -- which state manager wrote the data (read by `status` / `enqueue`) ------------------------
STATE_KIND = "orchestrator_mp:state_kind"  # string: lockfree | locked

# -- the lock-based baseline (state/locked.py) -------------------------------------------------
WORKER_STATES = "worker_states"  # hash: worker id -> JSON state, the old design's shared structure
QUEUE_LOCK = "lock:queue"  # held around claiming (and every other queue change)
COUNTERS_LOCK = "lock:counters"  # held around read-modify-write of the global counters
GLOBAL_LOCK = "lock:global"  # the global-lock variant: one lock for everything


def worker_lock_key(worker_id: str) -> str:
    """The lock of one worker's partition (its state entry, in-flight list and counters)."""
    return f"lock:worker:{{{worker_id}}}"


def external_lock_key(name: str) -> str:
    """The lock held around calls to a rate-limited external service (``acquire_lock``)."""
    return f"lock:external:{name}"


def fence_key(lock_key: str) -> str:
    """Fencing counter of a lock: INCR at each acquire; protected writes check it."""
    return f"fence:{lock_key}"


def applied_key(lock_key: str) -> str:
    """String with a PX expiry: the fencing tokens of the last write applied under a lock,
    so a write resent after a lost reply is recognised and not applied twice."""
    return f"applied:{lock_key}"


# -- shards: the same names under a hash tag (Redis Cluster) ------------------------------------
SHARDS = "orchestrator_mp:shards"  # string: how many shards the data is split over (absent: 1, plain)
# list: one token per task made claimable in a sharded layout (capped), so idle workers
# block on one key instead of polling every shard's queue
DOORBELL = "orchestrator_mp:doorbell"
DOORBELL_CAP = 64


def _prefixed(builder: Callable[..., str], prefix: str) -> Callable[..., str]:
    def build(*args: Any) -> str:
        return prefix + builder(*args)

    return build


class KeySpace:
    """The keys of one shard: every name of this module behind one hash-tag prefix.

    ``KeySpace()`` is the plain layout, today's names unchanged (one server). A
    sharded layout puts every key of shard ``i`` under the tag of :func:`shard_prefix`,
    so every script, MULTI and multi-key command of a shard stays in one cluster slot;
    a worker's partition in that shard is ``{tag}:worker:{w}:...``, in the same slot.
    Attributes mirror the module: ``space.QUEUE``, ``space.worker_state_key(w)``.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        # Every name is built once here: claims and settles read a dozen keys per call.
        for name, value in list(globals().items()):
            if isinstance(value, str) and name.isupper():
                setattr(self, name, prefix + value)
            elif callable(value) and name.endswith("_key"):
                setattr(self, name, _prefixed(value, prefix) if prefix else value)

    def key(self, name: str) -> str:
        """The key of a plain name (a counter, a stream) in this shard."""
        return self.prefix + name

    def plain(self, key: str) -> str:
        """The plain name of one of this shard's keys."""
        return key[len(self.prefix) :] if key.startswith(self.prefix) else key

    def __getattr__(self, name: str) -> Any:
        # Only reached for a name this module does not define (the others are set above).
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"KeySpace({self.prefix!r})"


PLAIN = KeySpace()


def shard_prefix(index: int, count: int) -> str:
    """The hash-tag prefix of shard ``index`` of ``count``: ``{om<i>.<k>}:``.

    The first ``k`` whose slot lies in the i-th of ``count`` equal slot ranges: on a
    cluster whose masters split the slots evenly (what ``--cluster create`` does),
    ``count`` = masters puts one shard on each master. Deterministic, so every client
    agrees on the keys without asking anyone.
    """
    low = index * REDIS_CLUSTER_HASH_SLOTS // count
    high = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // count
    k = 0
    while not low <= key_slot(f"{{om{index}.{k}}}".encode()) < high:
        k += 1
    return f"{{om{index}.{k}}}:"


def shard_spaces(count: int) -> list[KeySpace]:
    """The key spaces of a layout of ``count`` shards (1 shard on one server: plain)."""
    return [KeySpace(shard_prefix(i, count)) for i in range(count)]
