"""The recovery time the README states: a killed worker's in-flight tasks are back in the
queue moments after the kill, read from the `reclaimed` entry the recovery step appends."""
from __future__ import annotations

import time

from orchestrator_mp import ContinuousOrchestrator, keys
from orchestrator_mp.events import client_of, read_range
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks before workers fork)
from tests.helpers import settings_for, sigkill_worker, wait_for

RECOVERY_BOUND_S = 1.0


def test_killed_worker_tasks_are_requeued_within_a_second(db_path):
    """SIGKILL mid-task: the `reclaimed` entry (with requeued > 0) follows the kill by under a second."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=2, batch_size=8)) as orch:
        orch.submit_many("tests.sleep", [(50,) for _ in range(40)])
        victim_id, victim_pid = next(iter(orch.supervisor.pids().items()))
        wait_for(lambda: orch.state.get_worker_state(victim_id).get("status") == "busy", what="the victim to be busy")
        killed_at = time.time()
        sigkill_worker(victim_pid)
        client = client_of(orch.state)
        reclaimed = wait_for(
            lambda: [e for e in read_range(client, keys.WORKER_EVENTS)
                     if e.fields.get("event") == "reclaimed" and e.worker == victim_id],
            what="the reclaimed entry",
        )[0]
        assert orch.wait(timeout=60)
        audit = orch.audit()
    assert int(reclaimed.fields["requeued"]) > 0
    assert reclaimed.fields["reason"] == "died"
    assert reclaimed.time - killed_at < RECOVERY_BOUND_S, reclaimed.time - killed_at
    assert audit["ok"] and audit["counters"]["total_work_completed"] == 40
