"""The StateManager contract, continued: leases, delayed and idempotent submits, retries,
stored results, takeovers with a cause, cancellation, dead letters and streams; run
against every implementation (the ``manager`` fixture is parametrised)."""
from __future__ import annotations

import threading
import time

import pytest

from orchestrator_mp import keys
from orchestrator_mp.exceptions import BackendUnavailable, ConfigurationError, Fenced
from orchestrator_mp.models import Task
from tests.contract import (
    REDIS_IMPLEMENTATIONS,
    build_manager,
    failed,
    fifo,
    ok,
    raw_task,
)
from tests.helpers import wait_for


def test_a_lease_runs_out_without_heartbeats(short_lease_manager):
    """register sets a lease, heartbeat renews it, and without one the worker is expired."""
    manager = short_lease_manager
    epoch = manager.register_worker("w1", pid=1, host="h")
    assert manager.expired_workers() == []
    for _ in range(4):
        time.sleep(0.1)
        manager.heartbeat("w1", epoch)
    assert manager.expired_workers() == []
    wait_for(lambda: manager.expired_workers() == ["w1"], timeout=2, what="the lease to run out")
    assert manager.reclaim("w1", max_crashes=3, only_if_expired=True).epoch == epoch + 1


def test_reclaim_only_if_expired_leaves_a_live_lease_alone(manager):
    """With only_if_expired a live lease means None and no change at all."""
    epoch = manager.register_worker("w1", pid=1, host="h")
    manager.submit([raw_task()])
    manager.claim("w1", epoch, 1)
    assert manager.reclaim("w1", max_crashes=3, only_if_expired=True) is None
    assert manager.get_worker_state("w1")["epoch"] == str(epoch)
    assert manager.queue_depths()["by_worker"]["w1"] == 1 and manager.active_workers() == {"w1"}


def test_deregister_drops_the_lease_and_a_fenced_heartbeat_is_counted(manager):
    """A stopped worker is neither active nor expired; a zombie's heartbeat is refused and counted."""
    epoch = manager.register_worker("w1", pid=1, host="h")
    manager.deregister_worker("w1", epoch)
    assert manager.expired_workers() == [] and manager.active_workers() == set()
    other = manager.register_worker("w2", pid=1, host="h")
    manager.reclaim("w2", max_crashes=3)
    with pytest.raises(Fenced):
        manager.heartbeat("w2", other)
    with pytest.raises(Fenced):
        manager.deregister_worker("w2", other)  # refused, not counted
    assert manager.get_counter(keys.TOTAL_FENCED) == 1


def test_release_of_a_fenced_worker_counts_each_task(manager):
    """RELEASE refused: total_fenced grows by the number of tasks handed back."""
    manager.submit([raw_task() for _ in range(3)])
    epoch = manager.register_worker("w1", pid=1, host="h")
    claimed = manager.claim("w1", epoch, 3)
    manager.reclaim("w1", max_crashes=3)
    with pytest.raises(Fenced):
        manager.release("w1", epoch, claimed)
    assert manager.get_counter(keys.TOTAL_FENCED) == 3


def test_submit_is_idempotent_per_batch_id(manager):
    """The same batch id submitted twice queues (and counts) once."""
    raws = [raw_task() for _ in range(3)]
    assert manager.submit(raws, batch_id="batch-1") == 3
    assert manager.submit(raws, batch_id="batch-1") == 0
    assert manager.submit(raws[:1], batch_id="batch-2") == 1
    assert manager.get_counter(keys.TOTAL_WORK_CREATED) == 4
    assert manager.queue_depths()["pending"] == 4


def test_delayed_submissions_wait_until_due_then_claims_promote_them(manager):
    """due_at holds tasks in the delayed set; a claim after the due time takes them."""
    later = [raw_task("tests.add", i, 0) for i in range(2)]
    soon = [raw_task("tests.add", 9, 0)]
    manager.submit(later, due_at=time.time() + 3600)
    manager.submit(soon, due_at=time.time() + 0.2)
    depths = manager.queue_depths()
    assert (depths["pending"], depths["delayed"], depths["limited"]) == (0, 3, 0)
    epoch = manager.register_worker("w1", pid=1, host="h")
    assert manager.claim("w1", epoch, 4) == [] and manager.promote_due() == 0
    assert manager.task_status(Task.from_json(soon[0]).id) == ("delayed", None)
    # An idle worker wakes in time for the next due task (and may return [] as it wakes).
    assert wait_for(lambda: manager.wait_claim("w1", epoch, 4, 1, timeout_s=5), timeout=5) == soon
    assert manager.queue_depths()["delayed"] == 2
    assert manager.audit()["ok"]


def test_promote_due_moves_due_tasks_to_the_back_of_the_queue(manager):
    """promote_due (the supervisor's call) moves what is due, oldest due first, behind the queue."""
    first = raw_task("tests.add", 1, 0)
    manager.submit([first])
    due = [raw_task("tests.add", i, 1) for i in range(3)]
    for offset, raw in enumerate(due):
        manager.submit([raw], due_at=time.time() - 10 + offset)
    assert manager.promote_due() == 3 and manager.promote_due() == 0
    epoch = manager.register_worker("w1", pid=1, host="h")
    claimed = manager.claim("w1", epoch, 8)
    assert claimed == [first, *due] if fifo(manager) else sorted(claimed) == sorted([first, *due])


def test_failures_with_a_retry_go_to_the_delayed_set(manager):
    """A failure carrying its retry is counted as an error, not dead-lettered, and runs again."""
    raw = raw_task()
    manager.submit([raw])
    epoch = manager.register_worker("w1", pid=1, host="h")
    manager.claim("w1", epoch, 1)
    again = Task.from_json(raw).for_retry().to_json()
    result = manager.settle("w1", epoch, [failed(raw, retry_raw=again, retry_in_s=-1)])
    assert (result.completed, result.failed) == (0, 1)
    counters = manager.get_counters()
    assert counters[keys.TOTAL_RETRIED] == 1 and counters[keys.TOTAL_DEAD_LETTERED] == 0
    assert manager.stream_tail(keys.WORK_ERRORS).last["retry"] == "1"
    assert manager.dead_letters() == [] and manager.queue_depths()["delayed"] == 1
    assert manager.audit()["ok"]
    assert manager.claim("w1", epoch, 1) == [again]


def test_final_outcomes_are_stored_for_submitters_that_want_them(manager):
    """Completed and dead-lettered tasks with want_result have a result; others have none."""
    wanted, failing, unwanted = (raw_task("tests.add", i, 1, want_result=w) for i, w in ((1, True), (2, True), (3, False)))
    manager.submit([wanted, failing, unwanted])
    epoch = manager.register_worker("w1", pid=1, host="h")
    manager.claim("w1", epoch, 3)
    manager.settle("w1", epoch, [ok(wanted, "2"), failed(failing), ok(unwanted, "4")])
    ids = [Task.from_json(raw).id for raw in (wanted, failing, unwanted)]
    results = manager.get_results(ids)
    assert results[ids[0]]["status"] == "done" and results[ids[0]]["result"] == 2
    assert results[ids[0]]["worker"] == "w1" and results[ids[0]]["finished_at"] > 0
    assert results[ids[1]]["status"] == "failed" and results[ids[1]]["error_type"] == "ValueError"
    assert results[ids[2]] is None
    assert manager.get_result(ids[0])["result"] == 2
    assert manager.wait_result(ids[0], 1) == results[ids[0]]
    assert manager.task_status(ids[1])[0] == "failed"
    assert manager.task_status(ids[2]) == ("unknown", None)


def test_wait_result_blocks_until_the_outcome_is_stored(manager):
    """wait_result returns None on timeout, and the result once a worker settles it."""
    raw = raw_task(want_result=True)
    task_id = Task.from_json(raw).id
    manager.submit([raw])
    assert manager.task_status(task_id) == ("queued", None)
    epoch = manager.register_worker("w1", pid=1, host="h")
    manager.claim("w1", epoch, 1)
    assert manager.task_status(task_id) == ("running", None)
    started = time.monotonic()
    assert manager.wait_result(task_id, 0.2) is None
    assert 0.15 < time.monotonic() - started < 2
    timer = threading.Timer(0.2, manager.settle, args=("w1", epoch, [ok(raw, "7")]))
    timer.start()
    try:
        assert manager.wait_result(task_id, 5)["result"] == 7
    finally:
        timer.join()


def test_settle_clears_a_published_deadline(manager):
    """A time-limited task's deadline leaves the worker state when its batch settles."""
    manager.submit([raw_task()])
    epoch = manager.register_worker("w1", pid=1, host="h")
    (raw,) = manager.claim("w1", epoch, 1)
    deadline = manager.start_task("w1", epoch, Task.from_json(raw).id, 30)
    assert abs(deadline - (manager.clock() + 30)) < 5
    assert manager.get_worker_state("w1")["current_task"] == Task.from_json(raw).id
    manager.settle("w1", epoch, [ok(raw)])
    assert manager.get_worker_state("w1")["deadline"] == ""


def test_a_time_limit_is_enforced_only_while_it_stands(manager):
    """reclaim(deadline_of=...) takes over only a task still current and past its deadline
    on the state's clock; after its settle the deadline is gone and nothing is taken over."""
    manager.submit([raw_task(), raw_task()])
    epoch = manager.register_worker("w1", pid=1, host="h")
    first, second = manager.claim("w1", epoch, 2)
    first_id, second_id = Task.from_json(first).id, Task.from_json(second).id
    deadline = manager.start_task("w1", epoch, first_id, 0.05)
    assert manager.reclaim("w1", max_crashes=3, deadline_of=first_id) is None  # not yet past
    wait_for(lambda: manager.clock() > deadline, timeout=5, what="the deadline to pass")
    assert manager.reclaim("w1", max_crashes=3, deadline_of=second_id) is None  # not the current task
    manager.settle("w1", epoch, [ok(first)])
    assert manager.reclaim("w1", max_crashes=3, deadline_of=first_id) is None  # settled first: no timeout
    second_deadline = manager.start_task("w1", epoch, second_id, 0.05)
    wait_for(lambda: manager.clock() > second_deadline, timeout=5, what="the second deadline to pass")
    cause = failed(second, category="timeout")
    taken = manager.reclaim("w1", max_crashes=3, crashed=False, cause=cause, deadline_of=second_id)
    assert taken is not None and taken.epoch == epoch + 1
    counters = manager.get_counters()
    assert counters[keys.TOTAL_WORK_COMPLETED] == 1 and counters[keys.TOTAL_DEAD_LETTERED] == 1
    with pytest.raises(Fenced):
        manager.settle("w1", epoch, [ok(second)])
    assert manager.audit()["ok"]


def test_a_delay_counts_from_the_state_clock(manager):
    """submit(delay_s=) puts tasks due delay_s after the state's clock, and refuses nonsense."""
    manager.submit([raw_task()], delay_s=3600)
    assert manager.queue_depths()["delayed"] == 1
    epoch = manager.register_worker("w1", pid=1, host="h")
    assert manager.claim("w1", epoch, 1) == []
    soon = raw_task()
    manager.submit([soon], delay_s=0.05)
    assert wait_for(lambda: manager.claim("w1", epoch, 1), timeout=5, what="the delayed task") == [soon]
    for bad in ({"delay_s": float("nan")}, {"due_at": float("inf")}, {"due_at": 1.0, "delay_s": 1.0}):
        with pytest.raises(ConfigurationError):
            manager.submit([raw_task()], **bad)


def test_a_bad_payload_is_counted_as_foreign(manager):
    """A failure categorised bad_payload adds to total_foreign."""
    manager.submit([raw_task()])
    epoch = manager.register_worker("w1", pid=1, host="h")
    (raw,) = manager.claim("w1", epoch, 1)
    manager.settle("w1", epoch, [failed(raw, category="bad_payload")])
    assert manager.get_counter(keys.TOTAL_FOREIGN) == 1


def test_reclaim_settles_its_cause_and_requeues_the_rest_uncounted(manager):
    """A time limit: the named task fails (stored for its submitter), the others go back
    unchanged when the worker did not crash."""
    cause_raw = raw_task("tests.sleep", 10, want_result=True)
    other = raw_task("tests.add", 1, 1)
    manager.submit([cause_raw, other])
    epoch = manager.register_worker("w1", pid=1, host="h")
    assert sorted(manager.claim("w1", epoch, 2)) == sorted([cause_raw, other])
    cause = failed(cause_raw, category="timeout")
    result = manager.reclaim("w1", max_crashes=3, reason="timeout", crashed=False, cause=cause)
    assert (result.epoch, result.requeued, result.dead_lettered) == (epoch + 1, 1, 1)
    assert manager.dead_letters()[0]["category"] == "timeout"
    stored = manager.get_result(Task.from_json(cause_raw).id)
    assert stored["status"] == "failed" and stored["category"] == "timeout"
    state = manager.get_worker_state("w1")
    assert state["status"] == "dead" and state["deadline"] == ""
    other_epoch = manager.register_worker("w2", pid=1, host="h")
    assert manager.claim("w2", other_epoch, 2) == [other]  # crash count unchanged
    assert manager.audit()["ok"]


def test_a_retried_cause_waits_in_the_delayed_set(manager):
    """A cause with retries left is counted as retried, neither requeued nor dead-lettered."""
    raw = raw_task("tests.sleep", 10)
    manager.submit([raw])
    epoch = manager.register_worker("w1", pid=1, host="h")
    manager.claim("w1", epoch, 1)
    again = Task.from_json(raw).for_retry().to_json()
    cause = failed(raw, category="timeout", retry_raw=again, retry_in_s=60)
    result = manager.reclaim("w1", max_crashes=3, crashed=False, cause=cause)
    assert (result.requeued, result.dead_lettered) == (0, 0)
    assert manager.get_counter(keys.TOTAL_RETRIED) == 1 and manager.queue_depths()["delayed"] == 1
    assert manager.audit()["ok"]


def test_poison_is_stored_as_dead_lettered_for_its_submitter(manager):
    """A task dead-lettered by a takeover still gives its waiting submitter an outcome."""
    raw = Task(name="tests.add", args=(1, 1), crashes=2, want_result=True).to_json()
    manager.submit([raw])
    epoch = manager.register_worker("w1", pid=1, host="h")
    manager.claim("w1", epoch, 1)
    assert manager.reclaim("w1", max_crashes=3).dead_lettered == 1
    stored = manager.get_result(Task.from_json(raw).id)
    assert stored["status"] == "dead_lettered" and stored["error_type"] == "WorkerCrashed"
    assert manager.audit()["ok"]


def test_cancel_withdraws_only_queued_tasks(manager):
    """cancel_queued: True once for a queued task (counted), False for claimed or unknown ones."""
    raws = [raw_task("tests.add", i, 0) for i in range(3)]
    manager.submit(raws)
    epoch = manager.register_worker("w1", pid=1, host="h")
    [running] = manager.claim("w1", epoch, 1)
    queued = [raw for raw in raws if raw != running]
    assert manager.cancel_queued(queued[1]) is True
    assert manager.cancel_queued(queued[1]) is False
    assert manager.cancel_queued(running) is False  # in flight
    assert manager.get_counter(keys.TOTAL_CANCELLED) == 1
    assert manager.claim("w1", epoch, 4) == [queued[0]]
    assert manager.audit()["ok"]


def test_dead_letters_can_be_listed_retried_and_purged(manager):
    """Dead letters carry their stored string; retried ones are fresh submissions, purged ones gone."""
    raws = [Task(name="tests.add", args=(i, 0), retries=2, crashes=1).to_json() for i in range(4)]
    manager.submit(raws)
    epoch = manager.register_worker("w1", pid=1, host="h")
    manager.claim("w1", epoch, 1)  # a suspect travels alone
    for _ in range(3):
        manager.claim("w1", epoch, 1)
    manager.settle("w1", epoch, [failed(raw) for raw in raws])
    letters = manager.dead_letters(limit=None)
    assert len(letters) == 4 and all("raw" in entry for entry in letters)
    if fifo(manager):
        assert [entry["task"] for entry in letters] == list(reversed(raws))  # newest first
    assert sorted(entry["task"] for entry in letters) == sorted(raws)
    assert len(manager.dead_letters(limit=2)) == 2
    assert manager.retry_dead_letters(letters[:2]) == 2
    assert manager.retry_dead_letters(letters[:2]) == 0  # no longer there
    assert manager.purge_dead_letters([letters[2]]) == 1
    assert manager.purge_dead_letters() == 1
    counters = manager.get_counters()
    assert counters[keys.TOTAL_DLQ_RETRIED] == 2 and counters[keys.TOTAL_DLQ_PURGED] == 2
    assert counters[keys.TOTAL_WORK_CREATED] == 6
    again = manager.claim("w1", epoch, 4)
    retried = [entry["task"] for entry in letters[:2]]
    assert sorted(again) == sorted(Task.from_json(raw).fresh().to_json() for raw in retried)
    assert manager.queue_depths()["dead_letter"] == 0
    assert manager.audit()["ok"]


def test_follow_returns_entries_after_the_positions(manager):
    """follow waits for new stream entries past each position and advances the positions."""
    positions = {keys.WORK_COMPLETIONS: manager.stream_tail(keys.WORK_COMPLETIONS).last_id}
    assert manager.follow(positions, block_s=0.1) == []
    manager.submit([raw_task() for _ in range(2)])
    epoch = manager.register_worker("w1", pid=1, host="h")
    claimed = manager.claim("w1", epoch, 2)
    timer = threading.Timer(0.1, manager.settle, args=("w1", epoch, [ok(raw) for raw in claimed]))
    timer.start()
    try:
        entries = manager.follow(positions, block_s=5)
        if not fifo(manager):  # one settle per shard: the second may come a poll later
            entries += manager.follow(positions, block_s=0.5) if len(entries) < 2 else []
    finally:
        timer.join()
    if fifo(manager):
        assert [fields["n"] for stream, _, fields in entries] == ["1", "2"]
    else:  # each shard counts its own: the running totals are per shard
        assert len(entries) == 2 and sum(map(int, (f["n"] for _, _, f in entries))) in (2, 3)
    assert positions[keys.WORK_COMPLETIONS] == entries[-1][1] == manager.stream_tail(keys.WORK_COMPLETIONS).last_id
    assert manager.follow(positions, block_s=0.05) == []


@pytest.mark.parametrize("variant", REDIS_IMPLEMENTATIONS)
def test_fail_fast_managers_raise_backend_unavailable_at_once(settings, tmp_path, variant):
    """A fail-fast Redis manager on an unreachable server raises BackendUnavailable, without retrying."""
    state = build_manager(variant, settings, f"unix://{tmp_path}/nothing.sock", fail_fast=True)
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            state.get_counters()
        with pytest.raises(BackendUnavailable):
            state.claim("w1", 1, 4)
        assert time.monotonic() - started < 1.0
    finally:
        state.close()
