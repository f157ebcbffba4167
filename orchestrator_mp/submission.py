"""Submission: turning calls of a task into queue entries, checked before anything is sent.

The orchestrator's ``submit*`` methods (and through them the Executor) go through
:func:`task_name` and :func:`encode_calls`; nothing here talks to Redis, so a call
refused here (unknown name, bad partition key, arguments that are not JSON or too
large) has queued nothing.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Union

from .exceptions import ConfigurationError, PayloadError, UnknownTaskError
from .models import Task
from .registry import is_registered, name_of, shard_key_for

PARTITION_KEY = re.compile(r"[A-Za-z0-9_.:/@+-]{1,200}")

# One call: (args, kwargs), or just a sequence of positional arguments.
Call = Union[tuple[Iterable[Any], dict[str, Any]], Iterable[Any]]


def task_name(task: str | Callable[..., Any], *, strict: bool = True) -> str:
    """The queue name of ``task``, given by name or as the registered function.

    Raises:
        UnknownTaskError: a function registered under no name, or (``strict``) a name
            not registered in this process.
    """
    if isinstance(task, str):
        name = task
    else:
        found = name_of(task)
        if found is None:
            raise UnknownTaskError(getattr(task, "__qualname__", repr(task)))
        name = found
    if strict and not is_registered(name):
        raise UnknownTaskError(name)
    return name


def split_call(call: Any) -> tuple[Iterable[Any], dict[str, Any]]:
    """``(args, kwargs)`` of one call; raises ConfigurationError for anything else."""
    if (
        isinstance(call, tuple)
        and len(call) == 2
        and isinstance(call[1], dict)
        and isinstance(call[0], (list, tuple))
    ):
        return call[0], call[1]
    if isinstance(call, (list, tuple)):
        return call, {}
    raise ConfigurationError(f"each call must be (args, kwargs) or a sequence of arguments, got {call!r}")


def encode_calls(
    name: str,
    calls: Iterable[Call],
    *,
    max_payload_bytes: int,
    results: bool = True,
    max_retries: int | None = None,
    time_limit_s: float | None = None,
    partition_key: str | None = None,
) -> tuple[list[str], list[str]]:
    """The task ids and queue entries (JSON) of ``calls`` of task ``name``, in order.

    Raises:
        ConfigurationError: a malformed call or ``partition_key``.
        PayloadError: arguments that are not JSON-serialisable, or an entry over
            ``max_payload_bytes``.
    """
    if partition_key is not None and not PARTITION_KEY.fullmatch(partition_key):
        raise ConfigurationError(
            f"partition_key must be 1-200 characters of A-Z a-z 0-9 _ . : / @ + -, got {partition_key!r}"
        )
    raws, ids = [], []
    shard = shard_key_for(name)
    for call in calls:
        args, kwargs = split_call(call)
        entry = Task(
            name=name,
            args=tuple(args),
            kwargs=kwargs,
            want_result=results,
            max_retries=max_retries,
            time_limit_s=time_limit_s,
            partition_key=partition_key,
            shard_key=shard,
        )
        raw = entry.to_json()
        if len(raw) > max_payload_bytes:
            raise PayloadError(
                {"name": entry.name}, f"encoded task is {len(raw)} bytes, over the limit of {max_payload_bytes}"
            )
        raws.append(raw)
        ids.append(entry.id)
    return ids, raws


__all__ = ["PARTITION_KEY", "task_name", "split_call", "encode_calls"]
