"""State managers: one interface, chosen by name through :func:`create_state_manager`.

Each kind is registered once, with what it needs from the runtime; the rest of the
code asks the registry (``state_kind(name).needs_server``) instead of testing names.
"""
from __future__ import annotations

from typing import Any, Callable

import attrs

from ..config import Settings
from ..exceptions import ConfigurationError
from .base import (
    Capability,
    ReclaimResult,
    SettleResult,
    StateManager,
    StreamTail,
    TaskLimits,
)
from .filebased import FileStateManager, state_dir_for
from .locked import RedisEnabledStateManager
from .lockfree import RedisLockFreeStateManager, open_lockfree


@attrs.frozen
class StateKind:
    """One registered implementation.

    Attributes:
        name: the ``Settings.state`` / ``--state`` value.
        factory: builds a manager from the settings, the server URL (None without a
            server) and implementation-specific constructor options.
        needs_server: whether the runtime must start (or be given) a Redis server.
        summary: one line for help texts and reports.
    """

    name: str
    factory: Callable[..., StateManager]
    needs_server: bool
    summary: str


def _sizes(settings: Settings) -> dict[str, Any]:
    """The constructor options every kind takes from the settings."""
    return {
        "completions_maxlen": settings.completions_maxlen,
        "events_maxlen": settings.events_maxlen,
        "result_ttl_s": settings.result_ttl_s,
    }


def _unsharded(settings: Settings, kind: str) -> Settings:
    """``settings`` for a kind without shards; asking it for shards is an error."""
    if settings.shards is not None:
        raise ConfigurationError(f"--shards splits the lock-free state; the {kind} state has no shards")
    return settings


_KINDS: dict[str, StateKind] = {
    kind.name: kind
    for kind in (
        StateKind(
            "lockfree",
            lambda settings, url, fail_fast=False, **options: open_lockfree(
                url,
                shards=settings.shards,
                lease_s=settings.lease_s,
                client_retries=not fail_fast,
                **_sizes(settings),
                **options,
            ),
            needs_server=True,
            summary="atomic Redis operations only (Lua, INCR, XADD, MULTI); sharded on a cluster",
        ),
        StateKind(
            "locked",
            lambda settings, url, fail_fast=False, **options: RedisEnabledStateManager(
                url,
                worker_lease_s=settings.lease_s,
                client_retries=not fail_fast,
                **_sizes(_unsharded(settings, "locked")),
                **options,
            ),
            needs_server=True,
            summary="baseline: redis-py Lock (leased, fenced, tuned backoff) per partition",
        ),
        StateKind(
            "file",
            lambda settings, _url, fail_fast=False, **options: FileStateManager(
                state_dir_for(settings.db_path), lease_s=settings.lease_s, **_sizes(_unsharded(settings, "file")), **options
            ),
            needs_server=False,
            summary="legacy fallback: fcntl-locked files beside the database, fsync'd (slow)",
        ),
    )
}


# What the orchestrator uses when the embedded server cannot run at all.
FALLBACK_KIND = "file"


def state_kind(name: str) -> StateKind:
    """The registered kind ``name``; raises ConfigurationError for an unknown one."""
    try:
        return _KINDS[name]
    except KeyError:
        raise ConfigurationError(f"state must be one of {', '.join(_KINDS)}, got {name!r}") from None


def create_state_manager(
    settings: Settings, url: str | None, *, fail_fast: bool = False, **options: Any
) -> StateManager:
    """The state manager ``settings.state`` names, connected to ``url``.

    ``options`` go to the implementation's constructor (for example
    ``lock_scope="global"`` for the lock-based one). Call it in the process that
    will use the manager (after any fork). ``fail_fast`` managers raise on a lost
    connection (BackendUnavailable) instead of resending for ~15 s: workers
    resynchronise their in-flight list, the supervisor restarts a dead server instead
    of waiting on it, and long-running readers follow a new owner.
    """
    return state_kind(settings.state).factory(settings, url, fail_fast=fail_fast, **options)


__all__ = [
    "StateManager",
    "SettleResult",
    "ReclaimResult",
    "StreamTail",
    "StateKind",
    "Capability",
    "TaskLimits",
    "RedisLockFreeStateManager",
    "RedisEnabledStateManager",
    "FileStateManager",
    "create_state_manager",
    "state_kind",
    "FALLBACK_KIND",
    "state_dir_for",
]
