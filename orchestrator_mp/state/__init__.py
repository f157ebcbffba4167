"""State managers: one interface, chosen by name through :func:`create_state_manager`."""
from __future__ import annotations

from typing import Callable

from ..config import Settings
from ..exceptions import ConfigurationError
from .base import ReclaimResult, SettleResult, StateManager, StreamTail
from .lockfree import RedisLockFreeStateManager

_FACTORIES: dict[str, Callable[[Settings, str | None, bool], StateManager]] = {
    "lockfree": lambda settings, url, fail_fast: RedisLockFreeStateManager(
        url,
        completions_maxlen=settings.completions_maxlen,
        events_maxlen=settings.events_maxlen,
        lease_s=settings.lease_s,
        result_ttl_s=settings.result_ttl_s,
        client_retries=not fail_fast,
    ),
}


def create_state_manager(settings: Settings, url: str | None, *, fail_fast: bool = False) -> StateManager:
    """The state manager ``settings.state`` names, connected to ``url``.

    Call it in the process that will use the manager (after any fork). ``fail_fast``
    managers raise on a lost connection (BackendUnavailable) instead of resending for
    ~15 s: workers resynchronise their in-flight list, the supervisor restarts a dead
    server instead of waiting on it, and long-running readers follow a new owner.
    """
    try:
        factory = _FACTORIES[settings.state]
    except KeyError:
        raise ConfigurationError(f"state must be one of {', '.join(_FACTORIES)}, got {settings.state!r}") from None
    return factory(settings, url, fail_fast)


__all__ = [
    "StateManager",
    "SettleResult",
    "ReclaimResult",
    "StreamTail",
    "RedisLockFreeStateManager",
    "create_state_manager",
]
