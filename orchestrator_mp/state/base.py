"""The one interface the orchestrator and its workers talk to.

Each method's docstring is its contract: what is atomic, what an empty result
looks like, what it raises. Every implementation (lock-free Redis, the lock-based
baseline, the file fallback) is run against the same contract test suite. Any call
may also raise BackendUnavailable (the backend cannot be reached) and, on Redis,
BackendFull (the server is at ``maxmemory`` and refused a write of the step; nothing
of it was written, or of a step over several shards nothing in the refusing one, so
it may be sent again once memory is freed).

Vocabulary:
    partition: one worker's slice of the state (state hash, in-flight list,
        counters). Only its owner writes it, except at takeover.
    epoch: the owner's generation; bumped at takeover so a presumed-dead
        owner's late writes are rejected (raising :class:`Fenced`).
    raw task: the exact JSON string stored in the queue; settling a task names
        that string so the partition can remove exactly that entry.
"""
from __future__ import annotations

import abc
import enum
import json
import time
from typing import Any, Iterable, Protocol, Sequence, overload

import attrs

from .. import keys
from ..exceptions import ConfigurationError, PayloadError
from ..limits import ConcurrencyCap, Limiter
from ..models import BAD_PAYLOAD, Outcome, Task
from ..wire import dumps


@attrs.frozen
class SettleResult:
    """What a settle call counted: each task is counted once, duplicates not at all."""

    completed: int
    failed: int
    duplicates: int


@attrs.frozen
class ReclaimResult:
    """What a takeover did with a dead partition's in-flight tasks."""

    epoch: int
    requeued: int
    dead_lettered: int


@attrs.frozen
class StreamTail:
    """Length of a stream, the fields of its newest entry (empty if none) and its id."""

    length: int
    last: dict[str, str]
    last_id: str = "0-0"


def dead_letter_entry(outcome: Outcome, worker_id: str, failed_at: float | None = None) -> str:
    """The JSON stored in the dead-letter list for a failure (same for every backend)."""
    return dumps(
        {
            "task": outcome.raw,
            "task_id": outcome.task_id,
            "name": outcome.name,
            "category": outcome.category,
            "message": outcome.message,
            "traceback": outcome.traceback,
            "worker": worker_id,
            "failed_at": time.time() if failed_at is None else failed_at,
        }
    )


def decode_dead_letter(raw: str) -> dict[str, Any]:
    """A dead-letter entry as a dict, with ``raw`` (the stored string) added."""
    try:
        entry = json.loads(raw)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        entry = {"task": raw, "category": BAD_PAYLOAD, "message": "unreadable dead-letter entry"}
    record: dict[str, Any] = entry
    record["raw"] = raw
    return record


def metric_fields(name: str, value: float, tags: dict[str, object] | None) -> dict[str, str | float]:
    """The fields of one ``metrics:stream`` entry (same for every backend)."""
    fields: dict[str, str | float] = {"name": name, "value": value, "ts": time.time()}
    if tags:
        fields["tags"] = dumps(tags)
    return fields


@overload
def decode_result(stored: str) -> dict[str, Any]: ...
@overload
def decode_result(stored: None) -> None: ...
@overload
def decode_result(stored: str | None) -> dict[str, Any] | None: ...
def decode_result(stored: str | None) -> dict[str, Any] | None:
    """A stored task result as a dict (see :meth:`StateManager.get_result`); None if absent."""
    if stored is None:
        return None
    try:
        value = json.loads(stored)
    except ValueError:
        return {"status": "unknown", "message": "unreadable stored result"}
    return value if isinstance(value, dict) else {"status": "unknown"}


def requeueable_task(entry: dict[str, Any]) -> str | None:
    """The task inside a dead-letter entry, history cleared; None if it is not a task."""
    try:
        return Task.from_json(entry.get("task", "")).fresh().to_json()
    except PayloadError:
        return None


@attrs.frozen
class AuditSnapshot:
    """Counters, per-worker counters, stream tails and queue depths read together."""

    counters: dict[str, int]
    per_worker: dict[str, dict[str, int]]
    completions: StreamTail
    errors: StreamTail
    depths: dict[str, Any]


class Capability(enum.Enum):
    """What a state can do beyond the core contract; each state declares its set
    (``StateManager.capabilities``), and callers ask with :meth:`StateManager.supports`
    instead of finding out deep inside a call."""

    LIMITS = "limits"  # rate limits and concurrency caps: limits() returns them
    PARTITION_KEYS = "partition_keys"  # per-key order: keyed tasks are accepted
    RETIREMENT = "retirement"  # retire_finished() retires finished partitions
    REDIS_STREAMS = "redis_streams"  # stream_views(): streams other processes read with XREAD
    DEFERRED_WRITES = "deferred_writes"  # a pipeline= argument defers writes into the caller's MULTI


class TaskLimits(Protocol):
    """Rate limits and concurrency caps as a state enforces them (the lock-free state's
    :class:`~.redislimits.RedisLimits`): a worker admits each limited task, frees its
    slot, and binds the rest for ``with limiter(...)`` / ``with cap`` in task code."""

    def fence(self, epoch: int) -> None: ...

    def admit(
        self, worker_id: str, epoch: int, raw: str, task_id: str, rate: Limiter | None, cap: ConcurrencyCap | None
    ) -> Any: ...

    def release(self, cap: ConcurrencyCap, worker_id: str, task_id: str) -> bool: ...

    def release_worker_slots(self, worker_id: str) -> int: ...

    def wait_for_rate(self, limit: Limiter) -> float: ...

    def hold_slot(self, cap: ConcurrencyCap, poll_s: float = 0.01) -> str: ...

    def free_slot(self, cap: ConcurrencyCap, holder: str) -> None: ...

    def waiting(self) -> int: ...


class StateManager(abc.ABC):
    """Shared state for one orchestrator: workers, counters, streams and the queue.

    Every method is atomic as its docstring says. A lost or unreachable server raises
    :class:`~orchestrator_mp.exceptions.BackendUnavailable` from any method, a full one
    :class:`~orchestrator_mp.exceptions.BackendFull` from any that writes; a write on a
    worker's behalf whose partition was taken over raises
    :class:`~orchestrator_mp.exceptions.Fenced` and changes nothing (but ``total_fenced``).
    Optional capabilities are declared in :attr:`capabilities`.
    """

    kind: str = "abstract"
    capabilities: frozenset[Capability] = frozenset()
    shard_count: int = 1  # how many shards the data is split over (a Redis Cluster)
    on_cluster: bool = False  # whether the data lives on a Redis Cluster

    def supports(self, capability: Capability) -> bool:
        """Whether this state has ``capability`` (see :class:`Capability`)."""
        return capability in self.capabilities

    def stream_views(self) -> list[tuple[Any, keys.KeySpace]]:
        """``(client, key space)`` per shard, for readers of the streams that follow them
        from other processes (``monitor``, ``metrics``). Needs REDIS_STREAMS.

        Raises:
            ConfigurationError: this state keeps no Redis streams (the file state).
        """
        message = f"the {self.kind} state manager keeps no Redis streams to read"
        raise ConfigurationError(message)

    def lock_stats(self) -> dict[str, Any] | None:
        """What acquiring locks cost (the lock-based baseline); None for lock-free states."""
        return None

    def pipeline(self) -> Any:
        """A transaction pipeline to pass as ``pipeline=`` (DEFERRED_WRITES); its writes
        land atomically when the caller executes it. None where writes cannot be deferred."""
        return None

    # -- lifecycle ------------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and file handles; the manager is unusable afterwards."""

    def __enter__(self) -> "StateManager":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- workers --------------------------------------------------------------------------
    @abc.abstractmethod
    def register_worker(self, worker_id: str, *, pid: int, host: str) -> int:
        """Create (or take over) ``worker_id``'s partition and add it to ``active_workers``.

        Atomic. Returns the owner's epoch: every later write names it.
        """

    @abc.abstractmethod
    def heartbeat(self, worker_id: str, epoch: int) -> None:
        """Renew the worker's lease (``lease_s`` from now) and ``last_activity``.

        Not a state change: no version bump, no event. Raises Fenced.
        """

    @abc.abstractmethod
    def expired_workers(self) -> list[str]:
        """Members of ``active_workers`` whose lease has run out (presumed dead)."""

    @abc.abstractmethod
    def deregister_worker(self, worker_id: str, epoch: int) -> None:
        """Mark the worker stopped and remove it from ``active_workers`` (atomic).

        Raises Fenced if the partition was taken over.
        """

    @abc.abstractmethod
    def active_workers(self) -> set[str]:
        """Ids of the registered, live workers; an empty set when there are none."""

    @abc.abstractmethod
    def known_workers(self) -> set[str]:
        """Ids of every partition ever registered (live, stopped or dead)."""

    @abc.abstractmethod
    def get_worker_state(self, worker_id: str) -> dict[str, str]:
        """The worker's state hash as strings; ``{}`` for an unknown worker."""

    @abc.abstractmethod
    def batch_get_worker_states(self, worker_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """States of several workers in one round trip; unknown ids map to ``{}``."""

    @abc.abstractmethod
    def update_worker_field(
        self, worker_id: str, field: str, value: object, *, epoch: int | None = None, pipeline: Any = None
    ) -> int:
        """Set one field and bump the version in one atomic step; returns the new version.

        With ``epoch``, raises Fenced when the partition has another owner. With a
        ``pipeline``, the call is queued and the return value is unspecified.
        """

    @abc.abstractmethod
    def update_worker_state(
        self,
        worker_id: str,
        mapping: dict[str, object],
        expected_version: int | None = None,
        *,
        epoch: int | None = None,
    ) -> bool:
        """Set several fields and bump the version atomically.

        Returns False, writing nothing, when ``expected_version`` is given and the
        stored version differs (optimistic concurrency: re-read and retry).
        Raises Fenced when ``epoch`` is given and stale.
        """

    # -- counters, metrics ----------------------------------------------------------------
    @abc.abstractmethod
    def increment_counter(self, name: str, amount: int = 1, *, pipeline: Any = None) -> int:
        """Atomically add ``amount`` to counter ``name``; returns the new value."""

    @abc.abstractmethod
    def get_counter(self, name: str) -> int:
        """The counter's value; 0 if it was never incremented."""

    def get_counters(self, names: Sequence[str] = keys.COUNTERS) -> dict[str, int]:
        """Several counters at once (one round trip where the backend allows)."""
        return {name: self.get_counter(name) for name in names}

    @abc.abstractmethod
    def worker_counters(self, worker_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """``{worker: {"completed": n, "errors": m}}`` in one round trip."""

    @abc.abstractmethod
    def record_metric(
        self, name: str, value: float, tags: dict[str, object] | None = None, *, pipeline: Any = None
    ) -> None:
        """Append one sample to ``metrics:stream`` (capped, append-only)."""

    @abc.abstractmethod
    def stream_tail(self, stream: str) -> StreamTail:
        """Length and newest entry of one of the streams in :data:`keys.STREAMS`."""

    @abc.abstractmethod
    def read_stream(self, stream: str, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        """The newest ``count`` entries of a stream, oldest first."""

    @abc.abstractmethod
    def follow(
        self, positions: dict[str, str], block_s: float, count: int = 1000
    ) -> list[tuple[str, str, dict[str, str]]]:
        """Entries added after ``positions`` (stream -> last seen id), waiting up to
        ``block_s`` for the first (XREAD BLOCK on Redis; the file state polls);
        ``(stream, id, fields)`` in order per stream. ``positions`` is advanced in
        place. ``[]`` on timeout."""

    # -- housekeeping ---------------------------------------------------------------------------
    def retire_finished(self, grace_s: float) -> int:
        """Retire partitions that are surely finished (not registered, no lease, nothing in
        flight, inactive for ``grace_s`` on the state's clock): each one's counters fold
        into ``retired_completed`` / ``retired_errors``, and its keys and its place in
        ``known_workers`` go, one atomic step per partition. Returns how many. The audit
        counts the retired sums, so it holds as before. States that keep no per-partition
        keys worth retiring (the baseline, the file fallback) retire nothing."""
        return 0

    # -- limits -------------------------------------------------------------------------------
    def limits(self, worker_id: str | None = None) -> TaskLimits | None:
        """Rate limits and concurrency caps on this backend (None: not supported, as on the
        lock-based and file states; a worker then fails limited tasks with a clear message)."""
        return None

    # -- compatibility with the lock-based design -------------------------------------------
    def acquire_lock(
        self, name: str = "external", timeout: float | None = None, blocking_timeout: float | None = None
    ) -> bool:
        """No-op kept so callers of the lock-based design port unchanged; always True.
        The signature is the baseline's, where the lock is real (see ``state/locked.py``)."""
        return True

    def release_lock(self, name: str = "external") -> None:
        """No-op counterpart of :meth:`acquire_lock`."""
        return None

    # -- the queue ------------------------------------------------------------------------
    @abc.abstractmethod
    def submit(
        self,
        raw_tasks: Sequence[str],
        batch_id: str | None = None,
        due_at: float | None = None,
        *,
        delay_s: float | None = None,
    ) -> int:
        """Append tasks to the queue and add their number to ``total_work_created``.

        One atomic step for the whole sequence: the queue and the counter never
        disagree. ``batch_id`` (default: a fresh one) makes the call idempotent for
        five minutes (``SUBMIT_MARKER_TTL_S``, far longer than any client resends):
        submitting the same batch id again adds nothing, so a call retried
        after a lost reply never queues twice. With ``due_at`` (epoch seconds) or
        ``delay_s`` (seconds from now on the state's clock: the Redis server's, so a
        submitter with a skewed clock still delays by what it asked) the tasks wait
        in the delayed set until then. Returns the number submitted. Raises
        ConfigurationError for both at once or a value that is not a finite number.
        """

    @abc.abstractmethod
    def clock(self) -> float:
        """The state's clock in epoch seconds (on Redis: the server's ``TIME``), the one
        every due time, deadline and lease is measured with (STYLE rule 17)."""

    @abc.abstractmethod
    def start_task(self, worker_id: str, epoch: int, task_id: str, time_limit_s: float) -> float:
        """Publish that the worker runs ``task_id`` under a time limit: ``current_task``
        and ``deadline`` (the state's clock plus the limit), one atomic, versioned step.
        Returns the deadline. Raises Fenced. A settle clears the deadline."""

    @abc.abstractmethod
    def promote_due(self, limit: int = 1000) -> int:
        """Move delayed tasks whose time has come to the back of the queue (atomic).

        Claims do this too; callers with no claims to make (the supervisor) call it
        so delayed work is never stranded. Returns how many moved.
        """

    @abc.abstractmethod
    def claim(self, worker_id: str, epoch: int, max_count: int, divisor: int = 1) -> list[str]:
        """Move up to ``max_count`` tasks (a fair share: ceil(depth/divisor)) from the
        queue to the worker's in-flight list, in one atomic step, oldest first.

        Returns ``[]`` when the queue is empty (never blocks). Raises Fenced, and
        ConfigurationError when ``max_count`` is outside 0..MAX_BATCH_SIZE (nothing moves).
        """

    @abc.abstractmethod
    def wait_claim(self, worker_id: str, epoch: int, max_count: int, divisor: int, timeout_s: float) -> list[str]:
        """Like :meth:`claim`, but block up to ``timeout_s`` for the first task.

        Returns ``[]`` on timeout. Raises Fenced.
        """

    @abc.abstractmethod
    def settle(self, worker_id: str, epoch: int, outcomes: Sequence[Outcome]) -> SettleResult:
        """Record a batch of finished tasks in one atomic step.

        For each outcome still in the worker's in-flight list: remove it, add to the
        worker's and the global counter, append to ``work_completions`` or (failure)
        ``work_errors`` plus a dead-letter entry. Outcomes no longer in flight are
        counted as duplicates only. Raises Fenced (counting the batch as fenced).
        """

    @abc.abstractmethod
    def cancel_queued(self, raw_task: str) -> bool:
        """Remove a task from the queue (not in flight, not delayed) and count it in
        ``total_cancelled``, in one atomic step; False if it is no longer queued."""

    @abc.abstractmethod
    def release(self, worker_id: str, epoch: int, raw_tasks: Sequence[str]) -> int:
        """Return claimed, unstarted tasks to the front of the queue; returns how many."""

    @abc.abstractmethod
    def inflight(self, worker_id: str) -> list[str]:
        """The raw tasks in the worker's in-flight list, oldest claim first."""

    @abc.abstractmethod
    def reclaim(
        self,
        worker_id: str,
        *,
        max_crashes: int,
        reason: str = "died",
        crashed: bool = True,
        only_if_expired: bool = False,
        cause: Outcome | None = None,
        deadline_of: str | None = None,
    ) -> ReclaimResult | None:
        """Take over a dead worker's partition in one atomic step.

        Bumps its epoch (fencing the old owner), drops its lease, requeues its
        in-flight tasks at the front of the queue (raising their crash count when
        ``crashed``; dead-lettering those reaching ``max_crashes`` as poison), and
        removes it from ``active_workers``. ``cause`` names one in-flight task that
        is settled as that failure instead (a time limit). With ``only_if_expired``
        nothing happens, and None is returned, while the lease is alive. With
        ``deadline_of`` (a task id) nothing happens, and None is returned, unless that
        task is still the worker's current task and its deadline has passed on the
        state's clock: a time limit is enforced only while it stands, so a task whose
        settle landed first is never recorded as a timeout. Safe to repeat: a second
        call requeues nothing.
        """

    @abc.abstractmethod
    def queue_depths(self, worker_ids: Iterable[str] | None = None) -> dict[str, Any]:
        """``{"pending", "inflight", "delayed", "dead_letter": n, "by_worker": {id: n}}``.

        ``worker_ids`` defaults to every known worker.
        """

    @abc.abstractmethod
    def dead_letters(self, limit: int | None = 100) -> list[dict[str, Any]]:
        """The newest dead-letter entries (decoded JSON, plus ``raw``: the stored
        string), newest first; ``limit=None`` for all."""

    @abc.abstractmethod
    def retry_dead_letters(self, entries: Sequence[dict[str, Any]]) -> int:
        """Send dead letters (as returned by :meth:`dead_letters`) back to the queue
        as fresh submissions, crash and retry counts cleared, in one atomic step.

        Counts them in ``total_work_created`` and ``total_dlq_retried``; entries that
        are not tasks, or no longer in the list, are skipped. Returns how many moved.
        """

    @abc.abstractmethod
    def purge_dead_letters(self, entries: Sequence[dict[str, Any]] | None = None) -> int:
        """Discard the given dead letters (None: all), counting ``total_dlq_purged``."""

    # -- results ----------------------------------------------------------------------------
    def get_result(self, task_id: str) -> dict[str, Any] | None:
        """The stored final outcome of a task submitted with ``want_result``; None if not
        (yet) there or expired. Shape: ``{"status": "done", "result": ...}`` or
        ``{"status": "failed"|"dead_lettered", "category", "error_type", "message",
        "traceback"}``, plus ``worker`` and ``finished_at``."""
        return self.get_results([task_id])[task_id]

    @abc.abstractmethod
    def get_results(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Several stored outcomes in one round trip (see :meth:`get_result`)."""

    @abc.abstractmethod
    def wait_result(self, task_id: str, timeout_s: float | None) -> dict[str, Any] | None:
        """Like :meth:`get_result`, but block up to ``timeout_s`` (None: forever) for it,
        with a blocking server read on Redis (the file state polls with short sleeps).
        None on timeout."""

    @abc.abstractmethod
    def task_status(self, task_id: str) -> tuple[str, dict[str, Any] | None]:
        """Where a task is: ``done``/``failed``/``dead_lettered`` (with its stored
        result), ``running``, ``queued``, ``delayed`` or ``unknown``. Scans the queue:
        for diagnostics, not hot paths."""

    # -- auditing ---------------------------------------------------------------------------
    def audit_snapshot(self) -> AuditSnapshot:
        """Everything :meth:`audit` compares. Backends that can read it all in one
        atomic step override this, so an audit during a busy run is still exact."""
        return AuditSnapshot(
            counters=self.get_counters(),
            per_worker=self.worker_counters(self.known_workers()),
            completions=self.stream_tail(keys.WORK_COMPLETIONS),
            errors=self.stream_tail(keys.WORK_ERRORS),
            depths=self.queue_depths(),
        )

    def audit(self) -> dict[str, Any]:
        """Check that counters agree with each other and with the streams (see
        :func:`audit_report`), on :meth:`audit_snapshot`."""
        return audit_report(self.audit_snapshot())


def audit_report(snapshot: AuditSnapshot) -> dict[str, Any]:
    """Check that counters agree with each other and with the streams, in one snapshot.

    Holds after any run, including crashed ones; streams carry each entry's running
    total ``n``, so trimming (MAXLEN) never hides a mismatch. Returns ``{"ok", "checks",
    "counters", "stream_lengths", "queues"}``.
    """
    counters, per_worker, depths = snapshot.counters, snapshot.per_worker, snapshot.depths
    completions, errors = snapshot.completions, snapshot.errors
    completed = counters[keys.TOTAL_WORK_COMPLETED]
    failed = counters[keys.TOTAL_ERRORS]
    dead = counters[keys.TOTAL_DEAD_LETTERED]
    waiting = (
        depths["pending"] + depths["inflight"] + depths["delayed"] + depths.get("limited", 0) + depths.get("laned", 0)
    )
    checks = {
        # Partitions retired since fold their counts into the retired sums.
        "completed_equals_worker_sum": completed
        == sum(w["completed"] for w in per_worker.values()) + counters.get(keys.RETIRED_COMPLETED, 0),
        "errors_equal_worker_sum": failed
        == sum(w["errors"] for w in per_worker.values()) + counters.get(keys.RETIRED_ERRORS, 0),
        "completed_equals_stream": completed == int(completions.last.get("n", 0)),
        "errors_equal_stream": failed == int(errors.last.get("n", 0)),
        "stream_holds_no_more_than_counter": completions.length <= completed and errors.length <= failed,
        # Every task ever queued (submitted, or found in the queue without being
        # submitted: foreign) is completed, dead-lettered, cancelled, or still waiting.
        "created_equals_settled_plus_waiting": counters[keys.TOTAL_WORK_CREATED] + counters[keys.TOTAL_FOREIGN]
        == completed + dead + counters[keys.TOTAL_CANCELLED] + waiting,
        "dead_letter_depth_matches": depths["dead_letter"]
        == dead - counters[keys.TOTAL_DLQ_RETRIED] - counters[keys.TOTAL_DLQ_PURGED],
    }
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "counters": counters,
        "stream_lengths": {keys.WORK_COMPLETIONS: completions.length, keys.WORK_ERRORS: errors.length},
        "queues": depths,
    }
