"""Slot-check mode: find every command that a Redis Cluster would refuse as CROSSSLOT.

A cluster serves each key from one of 16,384 hash slots and refuses a command, a
transaction or a script whose keys fall in more than one. ``SlotCheck`` wraps a
client on any single server and records, per command or script, the calls whose keys
span several slots, so the whole runtime can be checked for cluster readiness without
a cluster. Scripts are named after their module constant (``SETTLE``, ``CLAIM``...),
found by the SHA1 of their text.

    check = SlotCheck.attach(state.redis)
    ... use the state manager ...
    assert not check.violations
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Callable, Iterable

import redis
from redis.crc import key_slot

from .state import steps

# Commands this project sends with more than one key, and where their keys are.
_ALL_ARGS = {"MGET", "DEL", "EXISTS", "UNLINK", "TOUCH", "WATCH", "SINTER", "SUNION"}
_TWO_KEYS = {"BLMOVE", "LMOVE", "RPOPLPUSH", "BRPOPLPUSH", "SMOVE", "RENAME"}


def _script_names() -> dict[str, str]:
    return {hashlib.sha1(text.encode()).hexdigest(): name for name, text in steps.scripts().items()}


def keys_of(args: tuple[Any, ...]) -> tuple[str, list[Any]]:
    """The command's name (a script's constant name for EVALSHA/EVAL) and its keys."""
    command = str(args[0]).upper()
    if command in ("EVALSHA", "EVAL"):
        numkeys = int(args[2])
        body = args[1] if command == "EVALSHA" else hashlib.sha1(str(args[1]).encode()).hexdigest()
        return _SCRIPTS.get(str(body), f"script {str(body)[:8]}"), list(args[3 : 3 + numkeys])
    if command in _ALL_ARGS:
        return command, list(args[1:])
    if command in _TWO_KEYS:
        return command, list(args[1:3])
    if command in ("XREAD", "XREADGROUP") and "STREAMS" in [str(a).upper() for a in args]:
        rest = list(args[[str(a).upper() for a in args].index("STREAMS") + 1 :])
        return command, rest[: len(rest) // 2]
    return command, list(args[1:2])


def slots(keys: Iterable[Any]) -> set[int]:
    return {key_slot(key.encode() if isinstance(key, str) else key) for key in keys}


class SlotCheck:
    """Records the calls (per command or script name) whose keys span several slots.

    Transactions (MULTI/EXEC pipelines) count as one call over all their keys, as a
    cluster treats them.
    """

    def __init__(self) -> None:
        self.violations: Counter[str] = Counter()
        self.examples: dict[str, list[Any]] = {}
        self.calls = 0

    @classmethod
    def attach(cls, client: redis.Redis) -> "SlotCheck":
        """Wrap ``client`` (and the pipelines it makes); returns the recorder."""
        check = cls()
        original: Callable[..., Any] = client.execute_command

        def execute_command(*args: Any, **options: Any) -> Any:
            check.record(*keys_of(args))
            return original(*args, **options)

        client.execute_command = execute_command  # type: ignore[method-assign]  # instrumentation, this instance only
        make_pipeline = client.pipeline

        def pipeline(transaction: bool = True, shard_hint: Any = None) -> Any:
            pipe = make_pipeline(transaction, shard_hint)
            queue = pipe.pipeline_execute_command
            batch: list[tuple[str, list[Any]]] = []

            def queue_command(*args: Any, **options: Any) -> Any:
                batch.append(keys_of(args))
                return queue(*args, **options)

            run = pipe.execute

            def execute(raise_on_error: bool = True) -> Any:
                if transaction and batch:
                    check.record("MULTI/EXEC", [key for _, keys in batch for key in keys])
                else:
                    for name, keys in batch:
                        check.record(name, keys)
                batch.clear()
                return run(raise_on_error)

            # Instrumentation: the pipeline's own methods are replaced on this instance.
            pipe.pipeline_execute_command = queue_command  # type: ignore[method-assign]
            pipe.execute = execute  # type: ignore[method-assign]
            return pipe

        client.pipeline = pipeline  # type: ignore[method-assign]  # as execute_command
        return check

    def record(self, name: str, keys: list[Any]) -> None:
        self.calls += 1
        if len(slots(keys)) > 1:
            self.violations[name] += 1
            self.examples.setdefault(name, [str(k) for k in keys])


_SCRIPTS = _script_names()

__all__ = ["SlotCheck", "keys_of", "slots"]
