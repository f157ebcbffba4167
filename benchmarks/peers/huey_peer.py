"""Huey: ``huey_consumer`` with 2 process workers on ``RedisHuey``.

Storage is the run's redis-server over its unix socket (``RedisHuey(url=...)``,
blocking ``BRPOP`` dequeue, Huey's default); results off (``results=False``),
periodic tasks off (``--no-periodic``), logging at WARNING (``--quiet``).
Completion: a ``SIGNAL_COMPLETE`` handler feeds a :class:`CompletionCounter`.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from huey import RedisHuey, signals

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

TASK_NAME = "peers.noop"

_completions = CompletionCounter()


def noop(index: int) -> None:
    """The no-op task."""
    return None


def _count_completion(signal: str, task: Any, *args: Any, **kwargs: Any) -> None:
    _completions.add()


def make_huey(url: str) -> tuple[RedisHuey, Any]:
    """A Huey on ``url`` with the counting signal handler, and the no-op task on it."""
    huey = RedisHuey(QUEUE, url=url, results=False)
    huey.signal(signals.SIGNAL_COMPLETE)(_count_completion)
    return huey, huey.task(name=TASK_NAME)(noop)


# What `huey_consumer benchmarks.peers.huey_peer.huey` loads in the consumer.
if URL_ENV in os.environ:
    huey, _noop_task = make_huey(os.environ[URL_ENV])


def run(ctx: RunContext) -> Measurement:
    with redis_server(ctx.workdir) as server:
        argv = [
            sys.executable, "-m", "huey.bin.huey_consumer", f"{__name__}.huey",
            "--workers", str(ctx.workers), "--worker-type", "process", "--no-periodic", "--quiet",
        ]
        client_huey, noop_task = make_huey(server.url)
        with WorkerProcesses(argv, server.url, os.path.join(ctx.workdir, "huey.log")) as workers:

            def enqueue(first: int, count: int) -> None:
                for i in range(first, first + count):
                    noop_task(i)

            with server_client(server.url) as client:
                try:
                    return measure(ctx, enqueue, done_key_reader(client), workers.check)
                finally:
                    client_huey.storage.conn.close()


PEERS = {
    "huey": Peer(
        name="huey",
        distribution="huey",
        settings=(
            "huey_consumer --workers 2 --worker-type process, RedisHuey on the unix socket (blocking dequeue), "
            "results=False, --no-periodic, --quiet; enqueue: calling the task"
        ),
        run=run,
    ),
}
