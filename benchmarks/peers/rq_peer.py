"""RQ: ``rq worker-pool --num-workers 2`` on the run's redis-server over its unix socket.

Two variants of the worker class: ``SimpleWorker`` (runs jobs in the worker
process: the choice for short jobs) and RQ's default ``Worker`` (forks a work horse
per job, for isolation). Jobs are enqueued with ``Queue.enqueue_many`` (one
pipeline per 1,000 jobs) with ``result_ttl=0`` (results not kept), logging at
WARNING (``--quiet``). Completion: RQ itself counts each worker's successful jobs
(``successful_job_count`` in the worker's hash, in the same transaction that
finishes the job); the runner adds them up.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import redis
from rq import Queue, Worker

from .common import (
    QUEUE,
    Measurement,
    Peer,
    RunContext,
    WorkerProcesses,
    chunks,
    measure,
    redis_server,
    server_client,
)
from .rq_tasks import noop

ENQUEUE_CHUNK = 1_000  # jobs per enqueue_many pipeline


def _successful_jobs(client: redis.Redis) -> Callable[[], int]:
    def done() -> int:
        worker_keys = sorted(Worker.all_keys(connection=client))
        pipe = client.pipeline(transaction=False)
        for key in worker_keys:
            pipe.hget(key, "successful_job_count")
        return sum(int(value or 0) for value in pipe.execute())

    return done


def _runner(worker_class: str) -> Callable[[RunContext], Measurement]:
    def run(ctx: RunContext) -> Measurement:
        with redis_server(ctx.workdir) as server:
            argv = [
                sys.executable, "-m", "rq.cli", "worker-pool", "--num-workers", str(ctx.workers),
                "--url", server.url, "--worker-class", worker_class, "--quiet", QUEUE,
            ]
            with WorkerProcesses(argv, server.url, os.path.join(ctx.workdir, "rq.log")) as workers:
                with server_client(server.url) as client:
                    queue = Queue(QUEUE, connection=client)

                    def enqueue(first: int, count: int) -> None:
                        for indexes in chunks(first, count, ENQUEUE_CHUNK):
                            queue.enqueue_many([Queue.prepare_data(noop, (i,), result_ttl=0) for i in indexes])

                    return measure(ctx, enqueue, _successful_jobs(client), workers.check)

    return run


_COMMON = "rq worker-pool --num-workers 2, unix socket, enqueue_many (1,000 per pipeline), result_ttl=0, --quiet"
PEERS = {
    "rq": Peer(
        name="rq",
        distribution="rq",
        settings=f"{_COMMON}, --worker-class rq.worker.SimpleWorker (no fork per job)",
        run=_runner("rq.worker.SimpleWorker"),
    ),
    "rq-fork": Peer(
        name="rq-fork",
        distribution="rq",
        settings=f"{_COMMON}, RQ's default Worker (forks a work horse per job)",
        run=_runner("rq.worker.Worker"),
    ),
}
