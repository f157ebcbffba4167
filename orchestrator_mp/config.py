"""Settings: every default in one frozen, validated place.

The CLI builds a :class:`Settings` from its arguments; the library takes one (or
builds it from keyword arguments). Invalid values raise ConfigurationError naming
the field, what was expected and what was received.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import attrs

from .exceptions import ConfigurationError

STATE_KINDS = ("lockfree", "locked", "file")
DURABILITY_MODES = ("fast", "strict")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")

DEFAULT_DB = "orchestrator_mp.db"
# The most tasks one claim may move (batch_size's bound). Larger claims buy nothing:
# at 10,000 no-op tasks a round trip costs under 0.1 µs a task.
MAX_BATCH_SIZE = 10_000
# The most fields one worker-state update may set (a state hash is a handful of fields).
MAX_STATE_FIELDS = 64
LOG_LEVEL_ENV = "ORCHESTRATOR_MP_LOG_LEVEL"


def _int_at_least(minimum: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            message = f"{attribute.name} must be an integer >= {minimum}, got {value!r}"
            raise ConfigurationError(message)

    return check


def _int_between(minimum: int, maximum: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            message = f"{attribute.name} must be an integer from {minimum} to {maximum:,}, got {value!r}"
            raise ConfigurationError(message)

    return check


def _positive_number(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        message = f"{attribute.name} must be a number > 0, got {value!r}"
        raise ConfigurationError(message)


def _one_of(choices: tuple[str, ...]) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            message = f"{attribute.name} must be one of {', '.join(choices)}, got {value!r}"
            raise ConfigurationError(message)

    return check


def _boolean(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        message = f"{attribute.name} must be True or False, got {value!r}"
        raise ConfigurationError(message)


def _optional_positive_number(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _positive_number(instance, attribute, value)


def _upper(value: str) -> str:
    """``str.upper`` as a named function (mypy's attrs plugin takes no method as a converter)."""
    return str.upper(value)


def _default_log_level() -> str:
    return os.environ.get(LOG_LEVEL_ENV, "INFO").upper()


def default_workers() -> int:
    return os.cpu_count() or 2


@attrs.frozen(kw_only=True)
class Settings:
    """Everything a run needs; picklable, so it crosses the fork to workers.

    Attributes:
        db_path: the embedded server's database file (AOF beside it as ``PATH.aof``).
        redis_url: an external server instead of the embedded one (None: embedded).
        allow_eviction: accept a server whose ``maxmemory-policy`` is not ``noeviction``
            (refused by default: evicted keys lose queued tasks, leases and results).
            Unsafe; warned loudly at start.
        workers: worker processes to fork.
        state: which state manager implementation to use: ``lockfree`` (atomic Redis
            operations), ``locked`` (the lock-based baseline) or ``file`` (legacy
            files beside ``db_path``, no Redis server).
        batch_size: most tasks a worker claims in one round trip when the queue is deep
            (claims are sized to ~50 ms of work, so slow tasks come one or a few at a time);
            at most ``MAX_BATCH_SIZE`` (10,000).
        block_timeout_s: how long an idle worker blocks on an empty queue per call.
        completions_maxlen: approximate cap of ``work_completions`` and ``work_errors``.
        events_maxlen: approximate cap of the event, worker-event and metrics streams.
        max_crashes: deliveries that ended in a worker crash before a task is dead-lettered.
        max_retries: failures of a task retried before it is dead-lettered (a task's own
            ``max_retries``, from ``@task`` or its submission, wins).
        retry_backoff_s: first retry delay; doubles per retry, with jitter (half to full).
        retry_backoff_max_s: cap of the retry delay.
        time_limit_s: default per-task time limit (None: none); past it the worker is
            killed and replaced, and the task retried or dead-lettered as ``timeout``.
        lease_s: a worker whose heartbeat lease is this old is presumed dead.
        heartbeat_interval_s: how often each worker renews its lease.
        zombie_grace_s: how long a local worker declared dead (lease lost) may linger
            before the parent kills it.
        retire_after_s: how long a finished partition (stopped, or dead and taken over)
            stays before its counters fold into the retired sums and its keys go.
        result_ttl_s: how long a task's stored result (for handles and futures) is kept.
        async_concurrency: most coroutine tasks one worker runs at once.
        max_payload_bytes: largest encoded task accepted at submission.
        shutdown_timeout_s: how long a warm stop waits for workers before killing them.
        durability: ``fast`` (appendfsync everysec) or ``strict`` (appendfsync always).
        log_level: loguru level of the command line's stderr sink (``log.configure``;
            the library itself never configures logging).
        log_json: optional path of the command line's JSON-lines log file.
        shards: how many hash-tagged shards a new lock-free layout is split into
            (None: one per master on a Redis Cluster, the plain layout on one server).
            Fixed when the data is first written; every later client follows it.
    """

    db_path: str = attrs.field(default=DEFAULT_DB, converter=os.fspath)
    redis_url: str | None = None
    allow_eviction: bool = attrs.field(default=False, validator=_boolean)
    workers: int = attrs.field(factory=default_workers, validator=_int_at_least(1))
    state: str = attrs.field(default="lockfree", validator=_one_of(STATE_KINDS))
    batch_size: int = attrs.field(default=256, validator=_int_between(1, MAX_BATCH_SIZE))
    block_timeout_s: float = attrs.field(default=0.2, validator=_positive_number)
    completions_maxlen: int = attrs.field(default=200_000, validator=_int_at_least(1))
    events_maxlen: int = attrs.field(default=20_000, validator=_int_at_least(1))
    max_crashes: int = attrs.field(default=3, validator=_int_at_least(1))
    max_retries: int = attrs.field(default=0, validator=_int_at_least(0))
    retry_backoff_s: float = attrs.field(default=0.5, validator=_positive_number)
    retry_backoff_max_s: float = attrs.field(default=60.0, validator=_positive_number)
    time_limit_s: float | None = attrs.field(default=None, validator=_optional_positive_number)
    lease_s: float = attrs.field(default=3.0, validator=_positive_number)
    heartbeat_interval_s: float = attrs.field(default=0.5, validator=_positive_number)
    zombie_grace_s: float = attrs.field(default=30.0, validator=_positive_number)
    retire_after_s: float = attrs.field(default=300.0, validator=_positive_number)
    result_ttl_s: float = attrs.field(default=86_400.0, validator=_positive_number)
    async_concurrency: int = attrs.field(default=32, validator=_int_at_least(1))
    max_payload_bytes: int = attrs.field(default=1_048_576, validator=_int_at_least(64))
    shutdown_timeout_s: float = attrs.field(default=10.0, validator=_positive_number)
    durability: str = attrs.field(default="fast", validator=_one_of(DURABILITY_MODES))
    shards: int | None = attrs.field(default=None, validator=attrs.validators.optional(_int_at_least(1)))
    log_level: str = attrs.field(
        factory=_default_log_level, converter=_upper, validator=_one_of(LOG_LEVELS)
    )
    log_json: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_interval_s * 2 > self.lease_s:
            message = (
                f"heartbeat_interval_s must be at most half of lease_s, got "
                f"{self.heartbeat_interval_s} and {self.lease_s}"
            )
            raise ConfigurationError(message)

    def evolve(self, **changes: Any) -> "Settings":
        """A copy with some fields changed (validated again)."""
        return attrs.evolve(self, **changes)
