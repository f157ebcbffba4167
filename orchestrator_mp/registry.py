"""Task registry: the only way a name read from the queue becomes code to run.

A queue entry names a task; a worker looks that name up here and nowhere else.
Nothing is imported or unpickled because of what a queue entry says, so a
hostile entry can at worst name a task that is not registered, which is
recorded as an ``unknown_task`` error.

Register before the orchestrator starts: workers are forked and inherit the
registry as it is at that moment.

Importing the package registers nothing (STYLE rule 19): the registry holds what the
application registered. The library's own protocol tasks (:data:`MAP_CHUNK_TASK`,
which runs a chunk of an Executor ``map``) are *built in*: every worker resolves
them, no application registers them, and :func:`registered_names` does not list them.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar, overload

import attrs

from .exceptions import ConfigurationError, UnknownTaskError
from .limits import ConcurrencyCap, Limiter, concurrency_limit, limiter

F = TypeVar("F", bound=Callable[..., Any])


def _optional_non_negative_int(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigurationError(f"{attribute.name} must be an integer >= 0 or None, got {value!r}")


def _optional_positive_number(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ConfigurationError(f"{attribute.name} must be a number > 0 or None, got {value!r}")


@attrs.frozen(kw_only=True)
class TaskSpec:
    """A registered task and its execution policy (None: use the Settings default).

    Attributes:
        name: the name the queue uses.
        func: the function run by workers.
        max_retries: failures retried (with exponential backoff) before dead-lettering.
        time_limit_s: a worker running one call longer than this is killed and replaced;
            the call is retried or dead-lettered as ``timeout``.
        rate_limit: a shared rate limit every call of this task respects.
        concurrency: a shared cap on how many calls run at once, across all workers.
    """

    name: str
    func: Callable[..., Any]
    max_retries: int | None = attrs.field(default=None, validator=_optional_non_negative_int)
    time_limit_s: float | None = attrs.field(default=None, validator=_optional_positive_number)
    rate_limit: Limiter | None = None
    concurrency: ConcurrencyCap | None = None

    @property
    def limited(self) -> bool:
        return self.rate_limit is not None or self.concurrency is not None


_TASKS: dict[str, TaskSpec] = {}

MAP_CHUNK_TASK = "orchestrator_mp.map_chunk"


def map_chunk(name: str, calls: list[list[Any]]) -> list[Any]:
    """Run a registered task over several argument lists in one queue entry
    (``OrchestratorExecutor.map(..., chunksize=N)``)."""
    func = get_task(name)
    return [func(*args) for args in calls]


# Resolved by every worker, whichever application started it; not registrations.
_BUILTIN: dict[str, TaskSpec] = {MAP_CHUNK_TASK: TaskSpec(name=MAP_CHUNK_TASK, func=map_chunk)}


@overload
def task(func: F) -> F: ...


@overload
def task(
    *,
    name: str | None = None,
    max_retries: int | None = None,
    time_limit_s: float | None = None,
    rate_limit: str | Limiter | None = None,
    concurrency: int | ConcurrencyCap | None = None,
) -> Callable[[F], F]: ...


def task(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    max_retries: int | None = None,
    time_limit_s: float | None = None,
    rate_limit: str | Limiter | None = None,
    concurrency: int | ConcurrencyCap | None = None,
) -> Any:
    """Register a function as a task, under its own name or ``name``.

    Usable bare (``@task``) or with options: ``@task(name="resize", max_retries=3,
    time_limit_s=30, rate_limit="30/m", concurrency=3)``. ``rate_limit`` and
    ``concurrency`` also take shared objects (``limiter("github", "5000/h")``,
    ``concurrency_limit("api", 3)``) that several tasks can name. Registering a
    different function under a taken name raises ConfigurationError.
    """

    def register(target: F) -> F:
        register_task(
            name or target.__name__,
            target,
            max_retries=max_retries,
            time_limit_s=time_limit_s,
            rate_limit=rate_limit,
            concurrency=concurrency,
        )
        return target

    if func is not None:
        return register(func)
    return register


def register_task(
    name: str,
    func: Callable[..., Any],
    *,
    max_retries: int | None = None,
    time_limit_s: float | None = None,
    rate_limit: str | Limiter | None = None,
    concurrency: int | ConcurrencyCap | None = None,
) -> TaskSpec:
    """Register ``func`` under ``name`` (the same pair twice is allowed)."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"task name must be a non-empty string, got {name!r}")
    if not callable(func):
        raise ConfigurationError(f"task {name!r} must be callable, got {type(func).__name__}")
    existing = _TASKS.get(name) or _BUILTIN.get(name)
    if existing is not None and existing.func is not func:
        raise ConfigurationError(f"task name {name!r} is already registered to {existing.func!r}")
    if isinstance(rate_limit, str):
        rate_limit = limiter(f"task:{name}", rate_limit)
    if isinstance(concurrency, int) or isinstance(concurrency, bool):
        concurrency = concurrency_limit(f"task:{name}", concurrency)  # refuses a bool or a count < 1
    if concurrency is not None and not isinstance(concurrency, ConcurrencyCap):
        raise ConfigurationError(f"concurrency must be an int >= 1 or a concurrency_limit(...), got {concurrency!r}")
    if rate_limit is not None and not isinstance(rate_limit, Limiter):
        raise ConfigurationError(f"rate_limit must be a rate like '30/m' or a limiter(...), got {rate_limit!r}")
    spec = TaskSpec(
        name=name,
        func=func,
        max_retries=max_retries,
        time_limit_s=time_limit_s,
        rate_limit=rate_limit,
        concurrency=concurrency,
    )
    _TASKS[name] = spec
    return spec


def unregister_task(name: str) -> None:
    _TASKS.pop(name, None)


def get_spec(name: str) -> TaskSpec:
    """The registration under ``name`` (or the built-in task); raises UnknownTaskError if none."""
    spec = _TASKS.get(name) or _BUILTIN.get(name)
    if spec is None:
        raise UnknownTaskError(name)
    return spec


def shard_key_for(name: str) -> str | None:
    """Where a sharded layout keeps tasks of ``name``: with their cap (or else their
    rate limit) when the task has one, so one shard enforces the whole limit."""
    spec = _TASKS.get(name)
    if spec is None:
        return None
    if spec.concurrency is not None:
        return f"cap:{spec.concurrency.name}"
    if spec.rate_limit is not None:
        return f"rate:{spec.rate_limit.name}"
    return None


def get_task(name: str) -> Callable[..., Any]:
    """The function registered under ``name``; raises UnknownTaskError if none."""
    return get_spec(name).func


def name_of(func: Callable[..., Any]) -> str | None:
    """The name ``func`` is registered under (by identity), or None."""
    for spec in (*_TASKS.values(), *_BUILTIN.values()):
        if spec.func is func:
            return spec.name
    return None


def is_registered(name: str) -> bool:
    """Whether a worker forked now would resolve ``name`` (registered or built in)."""
    return name in _TASKS or name in _BUILTIN


def registered_names() -> list[str]:
    """The names the application registered (built-in tasks are not listed)."""
    return sorted(_TASKS)
