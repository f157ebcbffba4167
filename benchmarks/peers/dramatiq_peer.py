"""Dramatiq: ``dramatiq`` with 2 worker processes on its Redis broker.

The broker is the run's redis-server over its unix socket; Dramatiq's default
middleware (age limit, time limit, shutdown notifications, callbacks, pipelines,
retries), no results middleware (results not stored). Two variants: 8 threads per
process (Dramatiq's default; prefetch 2 x threads) and 1 thread. Completion: an
``after_process_message`` middleware feeds a :class:`CompletionCounter`.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from .common import (
    QUEUE,
    URL_ENV,
    CompletionCounter,
    Measurement,
    Peer,
    RunContext,
    WorkerProcesses,
    done_key_reader,
    measure,
    redis_server,
    server_client,
)

ACTOR_NAME = "peers_noop"

_completions = CompletionCounter()


def noop(index: int) -> None:
    """The no-op task."""
    return None


class CountCompletions(dramatiq.Middleware):
    """Counts every processed message (in the worker threads)."""

    def after_process_message(self, broker: dramatiq.Broker, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        _completions.add()


def make_broker(url: str) -> tuple[RedisBroker, dramatiq.Actor]:
    """A Redis broker on ``url`` with the counting middleware, and the no-op actor on it."""
    broker = RedisBroker(url=url)
    broker.add_middleware(CountCompletions())
    actor = dramatiq.actor(noop, actor_name=ACTOR_NAME, queue_name=QUEUE, broker=broker)
    return broker, actor


# What `dramatiq benchmarks.peers.dramatiq_peer:broker` loads in the worker processes.
if URL_ENV in os.environ:
    broker, _actor = make_broker(os.environ[URL_ENV])


def _runner(threads: int) -> Callable[[RunContext], Measurement]:
    def run(ctx: RunContext) -> Measurement:
        with redis_server(ctx.workdir) as server:
            argv = [
                sys.executable, "-m", "dramatiq", f"{__name__}:broker",
                "--processes", str(ctx.workers), "--threads", str(threads),
            ]
            client_broker, actor = make_broker(server.url)
            try:
                with WorkerProcesses(argv, server.url, os.path.join(ctx.workdir, "dramatiq.log")) as workers:

                    def enqueue(first: int, count: int) -> None:
                        for i in range(first, first + count):
                            actor.send(i)

                    with server_client(server.url) as client:
                        return measure(ctx, enqueue, done_key_reader(client), workers.check)
            finally:
                client_broker.close()

    return run


_COMMON = "dramatiq --processes 2, Redis broker on the unix socket, default middleware, no results; enqueue: actor.send"
PEERS = {
    "dramatiq": Peer(
        name="dramatiq",
        distribution="dramatiq",
        settings=f"{_COMMON}, --threads 8 (default)",
        run=_runner(8),
    ),
    "dramatiq-1thread": Peer(
        name="dramatiq-1thread",
        distribution="dramatiq",
        settings=f"{_COMMON}, --threads 1",
        run=_runner(1),
    ),
}
