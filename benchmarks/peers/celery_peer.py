"""Celery: ``celery worker`` with the prefork pool (2 processes) on the Redis broker.

The broker is the run's redis-server over its unix socket (``redis+socket://``).
Early acknowledgement (Celery's default), results disabled (``task_ignore_result``,
no backend), rate limits off, gossip/mingle/heartbeat off (one worker, nothing to
sync), logging at WARNING (no per-task lines). Completion: the ``task_postrun``
signal in each pool process feeds a :class:`CompletionCounter`.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery
from celery.signals import task_postrun

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
    socket_path,
)

PREFETCH_MULTIPLIER = 64  # messages reserved per pool process (Celery's default: 4)
TASK_NAME = "peers.noop"


def noop(index: int) -> None:
    """The no-op task."""
    return None


def make_app(url: str) -> Celery:
    """A Celery app on the server at ``url`` (``unix://PATH``), with the no-op task."""
    app = Celery("peers", broker=f"redis+socket://{socket_path(url)}", set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=False,
        task_default_queue=QUEUE,
        worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
        worker_disable_rate_limits=True,
        broker_connection_retry_on_startup=True,
    )
    app.task(name=TASK_NAME)(noop)
    return app


# What `celery -A benchmarks.peers.celery_peer:app worker` loads in the worker processes.
app = make_app(os.environ.get(URL_ENV, "unix:///nonexistent"))
_completions = CompletionCounter()


@task_postrun.connect
def _count_completion(**_kwargs: Any) -> None:
    _completions.add()


def run(ctx: RunContext) -> Measurement:
    with redis_server(ctx.workdir) as server:
        argv = [
            sys.executable, "-m", "celery", "-A", f"{__name__}:app", "worker",
            "--pool", "prefork", "--concurrency", str(ctx.workers),
            "--prefetch-multiplier", str(PREFETCH_MULTIPLIER),
            "--queues", QUEUE, "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
        client_app = make_app(server.url)
        try:
            with WorkerProcesses(argv, server.url, os.path.join(ctx.workdir, "celery.log")) as workers:
                noop_task = client_app.tasks[TASK_NAME]

                def enqueue(first: int, count: int) -> None:
                    with client_app.producer_or_acquire() as producer:
                        for i in range(first, first + count):
                            noop_task.apply_async((i,), producer=producer)

                with server_client(server.url) as client:
                    return measure(ctx, enqueue, done_key_reader(client), workers.check)
        finally:
            client_app.close()



PEERS = {
    "celery": Peer(
        name="celery",
        distribution="celery",
        settings=(
            f"celery worker --pool prefork --concurrency 2, Redis broker on the unix socket, "
            f"worker_prefetch_multiplier {PREFETCH_MULTIPLIER}, early ack (default), results disabled, "
            "rate limits off, without gossip/mingle/heartbeat, -O default, loglevel WARNING; "
            "enqueue: apply_async on one producer"
        ),
        run=run,
    ),
}
