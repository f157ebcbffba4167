"""``multiprocessing.Pool``: the no-persistence bound.

Two forked processes, ``pool.map(noop, range(N), chunksize=1)``: every task still
crosses a pipe to a worker and its result comes back, but nothing touches Redis,
nothing is persisted, and a worker that dies loses its task.
"""
from __future__ import annotations

import multiprocessing
import time

from .common import Measurement, Peer, RunContext


def noop(index: int) -> None:
    """The no-op task."""
    return None


def run(ctx: RunContext) -> Measurement:
    """Time one ``map`` of ``ctx.tasks`` no-op calls (enqueue and results included)."""
    pool = multiprocessing.get_context("fork").Pool(ctx.workers)
    try:
        pool.map(noop, range(ctx.warmup), chunksize=1)
        started = time.perf_counter()
        pool.map(noop, range(ctx.tasks), chunksize=1)
        elapsed = time.perf_counter() - started
        pool.close()
    finally:
        pool.terminate()
        pool.join()
    return Measurement(tasks=ctx.tasks, elapsed_s=elapsed, enqueue_s=None)


PEERS = {
    "pool": Peer(
        name="pool",
        distribution=None,
        settings="multiprocessing.Pool(2) (fork); pool.map(noop, range(N), chunksize=1); no Redis, nothing persisted",
        run=run,
    ),
}
