"""Task registry: the only way a name read from the queue becomes code to run.

A queue entry names a task; a worker looks that name up here and nowhere else.
Nothing is imported or unpickled because of what a queue entry says, so a
hostile entry can at worst name a task that is not registered, which is
recorded as an ``unknown_task`` error.

Register before the orchestrator starts: workers are forked and inherit the
registry as it is at that moment.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar, overload

from .exceptions import ConfigurationError, UnknownTaskError

F = TypeVar("F", bound=Callable[..., Any])

_TASKS: dict[str, Callable[..., Any]] = {}


@overload
def task(func: F) -> F: ...


@overload
def task(*, name: str | None = None) -> Callable[[F], F]: ...


def task(func: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Register a function as a task, under its own name or ``name``.

    Usable bare (``@task``) or with arguments (``@task(name="resize")``).
    Registering a different function under a taken name raises ConfigurationError.
    """

    def register(target: F) -> F:
        register_task(name or target.__name__, target)
        return target

    if func is not None:
        return register(func)
    return register


def register_task(name: str, func: Callable[..., Any]) -> None:
    """Register ``func`` under ``name`` (the same pair twice is allowed)."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"task name must be a non-empty string, got {name!r}")
    if not callable(func):
        raise ConfigurationError(f"task {name!r} must be callable, got {type(func).__name__}")
    existing = _TASKS.get(name)
    if existing is not None and existing is not func:
        raise ConfigurationError(f"task name {name!r} is already registered to {existing!r}")
    _TASKS[name] = func


def unregister_task(name: str) -> None:
    _TASKS.pop(name, None)


def get_task(name: str) -> Callable[..., Any]:
    """The function registered under ``name``; raises UnknownTaskError if none."""
    try:
        return _TASKS[name]
    except KeyError:
        raise UnknownTaskError(name) from None


def is_registered(name: str) -> bool:
    return name in _TASKS


def registered_names() -> list[str]:
    return sorted(_TASKS)
