"""Reclaiming dead workers' partitions: the one path by which lost work comes back.

Whoever notices a death (the parent through a process sentinel, a start-up scan
after a crash, a periodic sweep) calls the same atomic takeover,
:meth:`StateManager.reclaim`: the partition's epoch goes up, which fences the
old owner, and its in-flight tasks go back to the front of the queue, except the
poison ones, which are dead-lettered with their reason.
"""
from __future__ import annotations

from typing import Iterable

from .config import Settings
from .log import logger
from .models import Outcome
from .state import ReclaimResult, StateManager


def reclaim_worker(
    state: StateManager,
    worker_id: str,
    settings: Settings,
    reason: str,
    *,
    crashed: bool = True,
    only_if_expired: bool = False,
    cause: Outcome | None = None,
    deadline_of: str | None = None,
) -> ReclaimResult | None:
    """Take over one partition and log what came back (None: nothing was taken over:
    its lease was alive, or the ``deadline_of`` task's time limit no longer stands)."""
    result = state.reclaim(
        worker_id,
        max_crashes=settings.max_crashes,
        reason=reason,
        crashed=crashed,
        only_if_expired=only_if_expired,
        cause=cause,
        deadline_of=deadline_of,
    )
    limits = state.limits()
    if result is not None and limits is not None:
        freed = limits.release_worker_slots(worker_id)
        if freed:
            logger.warning("freed {} concurrency slot(s) held by {}", freed, worker_id)
    if result is not None and (result.requeued or result.dead_lettered):
        logger.warning(
            "reclaimed {} ({}): {} task(s) requeued, {} dead-lettered, epoch now {}",
            worker_id,
            reason,
            result.requeued,
            result.dead_lettered,
            result.epoch,
        )
    return result


def recover_stale_partitions(state: StateManager, settings: Settings, *, exclusive: bool) -> int:
    """At start-up, take over the partitions whose owners are gone.

    ``exclusive`` (the embedded server, whose database lock guarantees no other
    orchestrator runs): every registered worker is a leftover of a crashed run. On a
    shared, external server other hosts' workers may be alive: only partitions whose
    lease lapsed, or that hold work with no registered owner, are taken over.
    Returns how many tasks were requeued.
    """
    active = state.active_workers()
    depths = state.queue_depths()["by_worker"]
    orphaned = {w for w, n in depths.items() if n} - active
    requeued, taken = 0, 0
    for worker_id in sorted(active | orphaned):
        only_if_expired = not exclusive and worker_id in active
        result = reclaim_worker(state, worker_id, settings, reason="stale", only_if_expired=only_if_expired)
        if result is not None:
            taken += 1
            requeued += result.requeued
    if taken:
        logger.info("start-up recovery: {} stale partition(s), {} task(s) requeued", taken, requeued)
    return requeued


def sweep_dead_partitions(state: StateManager, settings: Settings, live: Iterable[str]) -> int:
    """Requeue tasks found in partitions whose owner is no longer live.

    A worker fenced while blocked on an empty queue can still land one task in its
    old in-flight list (BLMOVE cannot check an epoch) and die before its next claim
    hands it back; this sweep returns it.

    The sweep reads the registered workers and the in-flight lists at two moments, so
    a worker on another host that registers between them looks ownerless: each
    takeover is therefore conditional on the partition's lease having lapsed, checked
    in the takeover's own atomic step (a live worker is never taken over by a sweep).
    """
    live = set(live) | state.active_workers()
    requeued = 0
    for worker_id, inflight in state.queue_depths()["by_worker"].items():
        if inflight and worker_id not in live:
            result = reclaim_worker(state, worker_id, settings, reason="sweep", crashed=False, only_if_expired=True)
            requeued += result.requeued if result is not None else 0
    return requeued


def retire_finished_partitions(state: StateManager, settings: Settings) -> int:
    """Retire every surely finished partition (see :meth:`StateManager.retire_finished`)
    once it has been inactive ``settings.retire_after_s``: long enough that no late
    write of a zombie or blocking move is still on its way, short enough that a database
    never grows with the workers that ever ran. `status` shows dead workers until then."""
    retired = state.retire_finished(settings.retire_after_s)
    if retired:
        logger.debug("retired {} finished partition(s)", retired)
    return retired
