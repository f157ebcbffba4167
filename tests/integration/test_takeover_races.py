"""Takeovers that race a live worker (issue 13, hole 5): the sweep never takes over a
worker that registered after it looked, and a blocking claim that lands a task in a
partition taken over meanwhile hands it straight back."""
from __future__ import annotations

import threading

import pytest

from orchestrator_mp import ContinuousOrchestrator, keys
from orchestrator_mp.exceptions import Fenced
from orchestrator_mp.limits import concurrency_limit
from orchestrator_mp.recovery import sweep_dead_partitions
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks before workers fork)
from tests.contract import failed, ok, raw_task
from tests.helpers import settings_for, wait_for


class _StaleRegistry:
    """The state as the sweep saw it a moment ago: its read of active_workers predates
    a registration (the race), every other call goes to the real manager."""

    def __init__(self, state, active):
        self._state, self._active = state, active

    def active_workers(self):
        return set(self._active)

    def __getattr__(self, name):
        return getattr(self._state, name)


def test_the_sweep_never_takes_over_a_worker_that_registered_after_it_looked(state, settings):
    """A partition with work and a live lease is left alone, even when the sweep's list of
    registered workers was read before it registered (before: taken over live)."""
    state.submit([raw_task(), raw_task()])
    epoch = state.register_worker("other-host:1:0", pid=1, host="other-host")
    assert len(state.claim("other-host:1:0", epoch, 2)) == 2
    requeued = sweep_dead_partitions(_StaleRegistry(state, active=set()), settings, live=[])
    assert requeued == 0
    assert state.get_worker_state("other-host:1:0")["epoch"] == str(epoch)
    assert len(state.inflight("other-host:1:0")) == 2
    state.heartbeat("other-host:1:0", epoch)  # still its own


def test_the_sweep_still_returns_work_from_a_dead_partition(state, settings):
    """A partition whose owner is gone (no lease) is swept as before."""
    state.submit([raw_task()])
    epoch = state.register_worker("w1", pid=1, host="h")
    state.claim("w1", epoch, 1)
    state.redis.delete(keys.worker_lease_key("w1"))  # its lease lapsed
    state.redis.srem(keys.ACTIVE_WORKERS, "w1")
    assert sweep_dead_partitions(state, settings, live=[]) == 1
    assert state.queue_depths()["pending"] == 1


def _blocked_in_blmove(state):
    return any(client.get("cmd") == "blmove" for client in state.redis.client_list())


def test_a_blocking_claim_of_a_fenced_worker_hands_the_task_back(state):
    """A worker taken over while blocked on an empty queue gets a task moved into its old
    list; its next claim is refused and puts the task back in the queue at once (before:
    it waited there for a sweep, or for the next start when it happened during a stop).
    The sharded layout has no blocking move: its idle workers wait on a doorbell."""
    epoch = state.register_worker("w1", pid=1, host="h")
    outcome = {}

    def blocked_claim():
        try:
            outcome["claimed"] = state_for_thread.wait_claim("w1", epoch, 8, 1, 10.0)
        except Fenced as exc:
            outcome["fenced"] = exc

    state_for_thread = type(state)(state.url)  # its own connection: the blocking read holds one
    try:
        thread = threading.Thread(target=blocked_claim)
        thread.start()
        wait_for(lambda: _blocked_in_blmove(state), timeout=10, what="the worker to block on the queue")
        assert state.reclaim("w1", max_crashes=3, crashed=False) is not None  # taken over while blocked
        raw = raw_task()
        state.submit([raw])
        thread.join(timeout=15)
    finally:
        state_for_thread.close()
    assert "fenced" in outcome, outcome
    depths = state.queue_depths()
    assert depths["pending"] == 1 and depths["by_worker"]["w1"] == 0
    assert state.audit()["ok"]


def test_a_worker_taken_over_takes_no_code_level_slot(state):
    """``with cap:`` in a zombie's task is refused once its partition was taken over (its
    takeover freed its slots; a slot taken after it would leak for an hour)."""
    epoch = state.register_worker("w1", pid=1, host="h")
    limits = state.limits("w1")
    limits.fence(epoch)
    cap = concurrency_limit("database", 1)
    limits.free_slot(cap, limits.hold_slot(cap))
    assert state.reclaim("w1", max_crashes=3, crashed=False) is not None
    with pytest.raises(Fenced):
        limits.hold_slot(cap)
    assert state.redis.zcard(keys.slots_key("database")) == 0


def test_a_time_limit_check_that_lost_the_race_to_the_settle_kills_nothing(db_path):
    """The parent read a deadline just before the task's settle landed: enforcing it now
    neither kills the worker nor records a timeout (before: the worker was killed, and a
    task whose settle had not yet landed was recorded as a timeout and run again)."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
        handle = orch.submit("tests.slow_limited", 0.01)
        assert handle.result(timeout=30) == 0.01
        (worker,) = [w for w in orch.supervisor.workers.values() if w.retired_at is None]
        orch.supervisor._enforce_time_limit(worker, handle.id)  # the stale decision, replayed
        assert worker.process.is_alive() and not worker.reclaimed
        counters = orch.counters()
        assert orch.submit("tests.add", 1, 2).result(timeout=30) == 3
    assert counters["total_work_completed"] == 1 and counters["total_errors"] == 0


def test_finished_partitions_are_retired_and_the_audit_still_holds(manager):
    """A partition that stopped or died long enough ago folds its counters into the retired
    sums and leaves known_workers; a live one, or one still holding work, stays."""
    manager.submit([raw_task() for _ in range(6)])
    done = manager.register_worker("done", pid=1, host="h")
    manager.settle("done", done, [ok(raw) for raw in manager.claim("done", done, 3)])
    manager.deregister_worker("done", done)
    dead = manager.register_worker("dead", pid=2, host="h")
    manager.settle("dead", dead, [failed(raw) for raw in manager.claim("dead", dead, 1)])
    manager.claim("dead", dead, 1)
    manager.reclaim("dead", max_crashes=3, crashed=False)  # its in-flight task went back
    live = manager.register_worker("live", pid=3, host="h")
    holding = manager.claim("live", live, 1)
    assert manager.retire_finished(grace_s=3600) == 0  # all too recent
    retired = manager.retire_finished(grace_s=0)
    if manager.kind != "lockfree":
        assert retired == 0  # the baseline and the file state keep their partitions
        return
    assert retired >= 2
    assert manager.known_workers() == {"live"}
    counters = manager.get_counters()
    assert counters[keys.RETIRED_COMPLETED] == 3 and counters[keys.RETIRED_ERRORS] == 1
    assert manager.get_worker_state("done") == {}
    with pytest.raises(Fenced):
        manager.heartbeat("done", done)  # a zombie of a retired partition is fenced
    manager.settle("live", live, [ok(raw) for raw in holding])
    assert manager.audit()["ok"], manager.audit()
