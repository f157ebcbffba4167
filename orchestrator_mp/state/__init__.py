"""State managers: one interface, chosen by name through :func:`create_state_manager`."""
from __future__ import annotations

from typing import Callable

from ..config import Settings
from ..exceptions import ConfigurationError
from .base import ReclaimResult, SettleResult, StateManager, StreamTail
from .lockfree import RedisLockFreeStateManager

_FACTORIES: dict[str, Callable[[Settings, str | None], StateManager]] = {
    "lockfree": lambda settings, url: RedisLockFreeStateManager(
        url,
        completions_maxlen=settings.completions_maxlen,
        events_maxlen=settings.events_maxlen,
    ),
}


def create_state_manager(settings: Settings, url: str | None) -> StateManager:
    """The state manager ``settings.state`` names, connected to ``url``.

    Call it in the process that will use the manager (after any fork).
    """
    try:
        factory = _FACTORIES[settings.state]
    except KeyError:
        raise ConfigurationError(f"state must be one of {', '.join(_FACTORIES)}, got {settings.state!r}") from None
    return factory(settings, url)


__all__ = [
    "StateManager",
    "SettleResult",
    "ReclaimResult",
    "StreamTail",
    "RedisLockFreeStateManager",
    "create_state_manager",
]
