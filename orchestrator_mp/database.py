"""Finding and opening a database, whether or not an orchestrator runs on it.

A database is a path (``--db``) or a Redis URL. Who serves a path right now is
recorded in its lock file (:mod:`.dblock`); which state kind writes a Redis database
is noted in the database itself (:func:`record_kind`). From these:

    open_state(settings)     a state manager for one command (``enqueue``, ``status``,
                             ``dlq``...): the live owner's server, the file state, or a
                             temporary embedded server saved and stopped on exit
    Attachment(settings)     for long-running readers (``monitor``, ``metrics``,
                             ``status --watch``): follows the owner, never starts a server
    check_memory_policy(url) a server that may evict keys is refused (or, allowed, warned of)

:class:`ContinuousOrchestrator` uses the last two when it starts a run.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, cast

import redis

from . import keys
from .config import Settings
from .connection import (
    check_eviction_policy,
    check_reachable,
    create_client,
    is_out_of_memory,
    out_of_memory,
    redact,
)
from .dblock import check_db_path, read_owner
from .exceptions import ServerError
from .log import logger
from .server import EmbeddedServer
from .state import (
    FALLBACK_KIND,
    StateManager,
    create_state_manager,
    state_dir_for,
    state_kind,
)


def live_url(settings: Settings) -> str | None:
    """The Redis URL serving ``settings``' data right now, without starting anything.

    ``redis_url`` when set; else the socket of the live owner of the database (read
    from its lock file); None when nothing serves it.
    """
    if settings.redis_url:
        return settings.redis_url
    owner = read_owner(settings.db_path)
    if owner and owner.get("socket"):
        return f"unix://{owner['socket']}"
    return None


# Roles that only read: they refuse a database that does not exist instead of creating it.
READ_ONLY_ROLES = ("status", "monitor", "redis-cli")


def check_memory_policy(url: str, allow: bool, *, reader: bool = False) -> None:
    """Refuse a server that may evict keys (ConfigurationError); with ``allow``, or for
    a ``reader`` (which loses nothing), say loudly what can be lost instead."""
    client = create_client(url)
    try:
        problem = check_eviction_policy(client, redact(url), allow=allow or reader)
    finally:
        client.close()
    if problem and reader:
        logger.warning("{}; what is shown may already be incomplete", problem)
    elif problem:
        logger.warning(
            "UNSAFE, allowed by allow_eviction: {}. Redis may delete queued or in-flight tasks, leases "
            "(live workers are then taken over and their tasks run twice), worker state (fencing "
            "reopened) and stored results (their handles wait forever)",
            problem,
        )


def record_kind(url: str, kind: str) -> None:
    """Note in the database which state kind writes it, for ``status`` and ``enqueue``.

    A full server (maxmemory) refuses the write: a restart on it still works when the
    note is already there, else BackendFull says how full it is."""
    client = create_client(url)
    try:
        if client.get(keys.STATE_KIND) != kind:
            client.set(keys.STATE_KIND, kind)
    except redis.ResponseError as exc:
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory(client) from None
    finally:
        client.close()


def recorded_kind(url: str, default: str) -> str:
    client = create_client(url)
    try:
        return cast("str | None", client.get(keys.STATE_KIND)) or default
    finally:
        client.close()


@contextlib.contextmanager
def _managed(settings: Settings, url: str | None) -> Iterator[StateManager]:
    state = create_state_manager(settings, url)
    try:
        yield state
    finally:
        state.close()


def _is_file_database(settings: Settings) -> bool:
    """No live owner: is ``db_path`` file-based state (and no Redis data)?"""
    db = os.path.abspath(settings.db_path)
    redis_data = os.path.exists(db) or os.path.exists(db + ".aof")
    return not redis_data and (os.path.isdir(state_dir_for(db)) or not state_kind(settings.state).needs_server)


@contextlib.contextmanager
def open_state(settings: Settings, role: str = "command") -> Iterator[StateManager]:
    """A state manager on ``settings``' database, whether or not an orchestrator runs.

    With ``redis_url``: that server. Otherwise, when a live orchestrator owns the
    database, its socket (read from the lock file), or its state directory when it
    runs without a server. When none does: the file-based state if that is what the
    database holds, else a temporary embedded server on the database, saved and
    stopped on exit. Redis databases name the kind that wrote them; it is used.

    Raises:
        ServerError: a read-only ``role`` (:data:`READ_ONLY_ROLES`) on a database
            that does not exist, or the temporary server cannot start.
        ConfigurationError: ``redis_url`` names a server that may evict keys (unless
            ``allow_eviction``; read-only roles only warn).
    """
    if settings.redis_url:
        url = settings.redis_url
        check_reachable(url)
        check_memory_policy(url, settings.allow_eviction, reader=role in READ_ONLY_ROLES)
        with _managed(settings.evolve(state=recorded_kind(url, settings.state)), url) as state:
            yield state
        return
    check_db_path(settings.db_path)
    file_settings = settings.evolve(state=FALLBACK_KIND)
    owner = read_owner(settings.db_path)
    if owner and owner.get("socket"):
        url = f"unix://{owner['socket']}"
        with _managed(settings.evolve(state=recorded_kind(url, settings.state)), url) as state:
            yield state
        return
    if owner or _is_file_database(settings):
        if not os.path.isdir(state_dir_for(settings.db_path)) and role in READ_ONLY_ROLES:
            raise ServerError(f"no database at {os.path.abspath(settings.db_path)} (nothing has run there yet)")
        with _managed(file_settings, None) as state:
            yield state
        return
    if not os.path.exists(settings.db_path) and role in READ_ONLY_ROLES:
        raise ServerError(f"no database at {os.path.abspath(settings.db_path)} (nothing has run there yet)")
    with EmbeddedServer(settings.db_path, durability=settings.durability, role=role) as server:
        url = server.url
        with _managed(settings.evolve(state=recorded_kind(url, settings.state)), url) as state:
            yield state


class Attachment:
    """A state manager on whatever serves a database right now, for long-running
    readers (``monitor``, ``metrics``, ``status --watch``).

    Unlike :func:`open_state` it never starts a server: a reader holding the
    database would make the next ``run`` on it refuse to start. Call :meth:`get`
    before each round of reads; it follows the owner across restarts (each start
    has a new socket) and returns None while nothing serves the database. After a
    ``redis.ConnectionError``, call :meth:`reset`.
    """

    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            check_db_path(settings.db_path)  # never wait for a run that cannot happen
        self.settings = settings
        self.url: str | None = None
        self.state: StateManager | None = None

    def get(self) -> StateManager | None:
        """The state manager on the current owner, or None when there is none."""
        url = live_url(self.settings)
        if url != self.url:
            self.reset()
        if url is None:
            return None
        if self.state is None:
            self.state = create_state_manager(self.settings, url, fail_fast=True)
            self.url = url
        return self.state

    def reset(self) -> None:
        """Drop the connection; the next :meth:`get` looks for the owner again."""
        if self.state is not None:
            self.state.close()
        self.state = None
        self.url = None

    close = reset

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.reset()


__all__ = [
    "open_state",
    "Attachment",
    "live_url",
    "check_memory_policy",
    "record_kind",
    "recorded_kind",
    "READ_ONLY_ROLES",
]
