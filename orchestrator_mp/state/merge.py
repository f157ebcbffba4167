"""Merging what each shard keeps (stream tails, entries, depths) into one view: every
invariant is linear and holds per shard, so sums and merges by entry id are exact."""
from __future__ import annotations

from typing import Any, Sequence

from .base import StreamTail


def id_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair (milliseconds, sequence)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def merged_tail(tails: Sequence[StreamTail], running_total: bool = False) -> StreamTail:
    """One tail for a stream kept per shard: total length, newest entry overall. With
    ``running_total``, ``n`` (each shard's running count) becomes the sum of the shards'."""
    present = [tail for tail in tails if tail.last]
    length = sum(tail.length for tail in tails)
    if not present:
        return StreamTail(length=length, last={})
    newest = max(present, key=lambda tail: id_order(tail.last_id))
    last = dict(newest.last)
    if running_total:
        last["n"] = str(sum(int(tail.last.get("n", 0)) for tail in present))
    return StreamTail(length=length, last=last, last_id=newest.last_id)


def summed_depths(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The shards' depths added up, and ``by_shard``: each shard's own (to spot one
    that carries more than its share, e.g. all tasks of a limited type)."""
    depths: dict[str, Any] = {"by_worker": {}}
    for part in parts:
        for name, value in part.items():
            if name == "by_worker":
                for worker_id, n in value.items():
                    depths["by_worker"][worker_id] = depths["by_worker"].get(worker_id, 0) + n
            else:
                depths[name] = depths.get(name, 0) + value
    depths["by_shard"] = [{k: v for k, v in part.items() if k != "by_worker"} for part in parts]
    return depths
