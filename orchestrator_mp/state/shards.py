"""Which shard holds what, in a sharded lock-free layout (a Redis Cluster).

Everything is decided from content alone, so every process, on every host, agrees
without asking anyone: a raw task's shard from the task itself, a worker's home shard
from its id, and the number of shards from one key the first writer sets.
"""
from __future__ import annotations

import zlib
from typing import Any

from .. import keys
from ..connection import is_cluster
from ..exceptions import ConfigurationError
from ..wire import partition_key_of, shard_key_of, task_id_of


def shard_of(text: str, count: int) -> int:
    """Which of ``count`` shards a routing key (task id, partition key, worker id) maps to."""
    return zlib.crc32(text.encode()) % count if count > 1 else 0


def shard_of_task(raw: str, count: int) -> int:
    """The shard a raw task lives in: by shard key (a limit's tasks), else partition
    key, else id, else its bytes. Read from the raw task alone, so every process agrees."""
    if count == 1:
        return 0
    shard_key = shard_key_of(raw)
    if shard_key is not None:
        return shard_of(shard_key, count)
    partition_key = partition_key_of(raw)
    if partition_key is not None:
        return shard_of("key:" + partition_key, count)
    return shard_of(task_id_of(raw) or raw, count)


def layout(client: Any, requested: int | None) -> int | None:
    """How many shards the data on ``client`` is split into (None: the plain layout).

    The first client to write fixes it (``SET NX`` of :data:`keys.SHARDS`): ``requested``,
    else one shard per cluster master, else the plain layout on a single server.
    """
    stored = client.get(keys.SHARDS)
    if stored is None:
        if requested is None and not is_cluster(client):
            return None
        wanted = requested or max(1, len(client.get_primaries()))
        client.set(keys.SHARDS, wanted, nx=True)
        stored = client.get(keys.SHARDS)
    count = int(stored)
    if requested is not None and requested != count:
        raise ConfigurationError(f"the data here is split into {count} shards; --shards {requested} cannot change that")
    return count


__all__ = ["shard_of", "shard_of_task", "layout"]
