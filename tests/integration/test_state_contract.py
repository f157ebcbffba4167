"""The StateManager contract, run against a real server (parametrised per implementation)."""
from __future__ import annotations

import json
import os

import multiprocess
import pytest

from orchestrator_mp import ContinuousOrchestrator, keys
from orchestrator_mp.exceptions import ConfigurationError, Fenced
from orchestrator_mp.models import Task
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks before workers fork)
from tests.contract import (
    IMPLEMENTATIONS,
    build_manager,
    claim_all,
    failed,
    fifo,
    ok,
    raw_task,
    server_url,
)
from tests.helpers import settings_for


def test_register_adds_to_active_workers_and_deregister_removes(manager):
    """Registration is SADD active_workers; a clean stop is SREM, the state says stopped."""
    epoch = manager.register_worker("w1", pid=123, host="h")
    assert epoch == 1
    assert manager.active_workers() == {"w1"}
    state = manager.get_worker_state("w1")
    assert state["status"] == "idle" and state["pid"] == "123" and state["host"] == "h"
    manager.deregister_worker("w1", epoch)
    assert manager.active_workers() == set()
    assert manager.known_workers() == {"w1"}
    assert manager.get_worker_state("w1")["status"] == "stopped"


def test_unknown_worker_state_is_empty(manager):
    """Reading a worker that never registered gives {}."""
    assert manager.get_worker_state("nobody") == {}
    assert manager.batch_get_worker_states(["nobody"]) == {"nobody": {}}


def test_update_worker_field_returns_growing_versions(manager):
    """Each field update bumps the version atomically and returns it."""
    manager.register_worker("w1", pid=1, host="h")
    v1 = manager.update_worker_field("w1", "status", "busy")
    v2 = manager.update_worker_field("w1", "current_task", "t1")
    assert v2 == v1 + 1
    assert manager.get_worker_state("w1")["version"] == str(v2)


def test_update_worker_state_refuses_a_stale_version(manager):
    """Optimistic concurrency: the expected version must match or nothing is written."""
    manager.register_worker("w1", pid=1, host="h")
    version = int(manager.get_worker_state("w1")["version"])
    assert manager.update_worker_state("w1", {"status": "a"}, expected_version=version)
    assert not manager.update_worker_state("w1", {"status": "b"}, expected_version=version)
    assert manager.get_worker_state("w1")["status"] == "a"


def test_reserved_fields_cannot_be_written(manager):
    """version and epoch belong to the state manager."""
    manager.register_worker("w1", pid=1, host="h")
    with pytest.raises(ConfigurationError):
        manager.update_worker_field("w1", "version", 99)


def test_state_changes_are_appended_to_the_event_stream(manager):
    """Every state change appends to events:stream."""
    manager.register_worker("w1", pid=1, host="h")
    manager.update_worker_field("w1", "status", "busy")
    if fifo(manager):
        last = manager.read_stream(keys.EVENTS, count=1)[-1][1]
        assert last["worker"] == "w1" and last["status"] == "busy"
    else:  # shards' entries of one millisecond merge in no particular order
        newest = [fields for _, fields in manager.read_stream(keys.EVENTS, count=4)]
        assert any(fields.get("worker") == "w1" and fields.get("status") == "busy" for fields in newest)
    assert any(e[1]["event"] == "registered" for e in manager.read_stream(keys.WORKER_EVENTS))


def test_batch_get_worker_states(manager):
    """Several states come back together, keyed by worker."""
    for worker in ("a", "b", "c"):
        manager.register_worker(worker, pid=1, host="h")
    states = manager.batch_get_worker_states(["a", "b", "c"])
    assert set(states) == {"a", "b", "c"} and all(s["status"] == "idle" for s in states.values())


def test_counters_increment_atomically(manager):
    """increment_counter returns the new value; unknown counters read 0."""
    assert manager.get_counter("total_errors") == 0
    assert manager.increment_counter("custom", 5) == 5
    assert manager.increment_counter("custom") == 6
    assert manager.get_counter("custom") == 6


def test_record_metric_appends_to_metrics_stream(manager):
    """Metrics are append-only stream entries with optional tags."""
    manager.record_metric("latency_ms", 1.5, tags={"task": "x"})
    entry = manager.read_stream(keys.METRICS)[-1][1]
    assert entry["name"] == "latency_ms" and float(entry["value"]) == 1.5
    assert json.loads(entry["tags"]) == {"task": "x"}


def test_lock_compatibility_calls_succeed_uncontended(manager):
    """acquire_lock/release_lock exist for ported callers: uncontended, True at once
    (a no-op for the lock-free and file managers, a real lock for the baseline)."""
    assert manager.acquire_lock("anything", timeout=5) is True
    assert manager.release_lock("anything") is None


def test_claim_moves_tasks_into_the_workers_inflight_list(manager):
    """A claimed task is in exactly one place: the claiming worker's in-flight list."""
    raws = [raw_task("tests.add", i, i) for i in range(5)]
    assert manager.submit(raws) == 5
    epoch = manager.register_worker("w1", pid=1, host="h")
    claimed = manager.claim("w1", epoch, max_count=3)
    if fifo(manager):
        assert claimed == raws[:3]  # oldest first
    else:
        assert len(claimed) == 3 and set(claimed) <= set(raws)
    depths = manager.queue_depths()
    assert depths["pending"] == 2 and depths["by_worker"]["w1"] == 3
    assert manager.get_worker_state("w1")["status"] == "busy"


def test_claim_takes_a_fair_share_of_a_shallow_queue(manager):
    """With 4 workers and 4 tasks, one claim takes 1 even when the batch allows 16."""
    manager.submit([raw_task() for _ in range(4)])
    epoch = manager.register_worker("w1", pid=1, host="h")
    assert len(manager.claim("w1", epoch, max_count=16, divisor=4)) == 1


def test_claim_on_an_empty_queue_returns_nothing(manager):
    """An empty queue is [] from claim, and [] after the timeout from wait_claim."""
    epoch = manager.register_worker("w1", pid=1, host="h")
    assert manager.claim("w1", epoch, 4) == []
    assert manager.wait_claim("w1", epoch, 4, 1, timeout_s=0.05) == []


def test_settle_counts_each_task_once(manager):
    """Completion: out of in-flight, both counters, one stream entry; a repeat is a duplicate."""
    manager.submit([raw_task() for _ in range(3)])
    epoch = manager.register_worker("w1", pid=1, host="h")
    claimed = manager.claim("w1", epoch, 3)
    result = manager.settle("w1", epoch, [ok(claimed[0]), ok(claimed[1]), failed(claimed[2])])
    assert (result.completed, result.failed, result.duplicates) == (2, 1, 0)
    again = manager.settle("w1", epoch, [ok(claimed[0])])
    assert (again.completed, again.duplicates) == (0, 1)
    counters = manager.get_counters()
    assert counters["total_work_completed"] == 2 and counters["total_errors"] == 1
    assert counters["total_duplicates"] == 1 and counters["total_dead_lettered"] == 1
    assert manager.worker_counters(["w1"]) == {"w1": {"completed": 2, "errors": 1}}
    assert manager.stream_tail(keys.WORK_COMPLETIONS).last["n"] == "2"
    assert manager.stream_tail(keys.WORK_ERRORS).last["category"] == "task_error"
    assert manager.dead_letters()[0]["task"] == claimed[2]
    assert manager.audit()["ok"]


def test_fenced_worker_cannot_settle_or_claim(manager):
    """After a takeover the old owner's writes are rejected and counted as fenced."""
    manager.submit([raw_task() for _ in range(2)])
    epoch = manager.register_worker("w1", pid=1, host="h")
    claimed = manager.claim("w1", epoch, 2)
    result = manager.reclaim("w1", max_crashes=3)
    assert result.epoch == epoch + 1 and result.requeued == 2
    with pytest.raises(Fenced):
        manager.settle("w1", epoch, [ok(claimed[0])])
    with pytest.raises(Fenced):
        manager.claim("w1", epoch, 1)
    with pytest.raises(Fenced):
        manager.update_worker_field("w1", "status", "x", epoch=epoch)
    assert manager.get_counter("total_work_completed") == 0
    assert manager.get_counter("total_fenced") == 3  # one settle, one claim, one field update
    assert manager.active_workers() == set()


def test_reclaim_requeues_with_crash_count_and_dead_letters_poison(manager):
    """Requeued tasks carry their crash count; at the limit they are dead-lettered."""
    manager.submit([raw_task()])
    for attempt in range(1, 4):
        worker = f"w{attempt}"
        epoch = manager.register_worker(worker, pid=1, host="h")
        (raw,) = manager.claim(worker, epoch, 1)
        assert Task.from_json(raw).crashes == attempt - 1
        result = manager.reclaim(worker, max_crashes=3)
    assert (result.requeued, result.dead_lettered) == (0, 1)
    entry = manager.dead_letters()[0]
    assert entry["category"] == "poison" and "crashed 3 workers" in entry["message"]
    assert manager.queue_depths()["pending"] == 0
    assert manager.audit()["ok"]


def test_reclaim_is_safe_to_repeat(manager):
    """A second takeover of the same partition requeues nothing more."""
    manager.submit([raw_task()])
    epoch = manager.register_worker("w1", pid=1, host="h")
    manager.claim("w1", epoch, 1)
    assert manager.reclaim("w1", max_crashes=3).requeued == 1
    assert manager.reclaim("w1", max_crashes=3).requeued == 0
    assert manager.queue_depths()["pending"] == 1


def test_release_hands_unstarted_tasks_back_to_the_front(manager):
    """A warm stop puts claimed tasks back where the next claim finds them first."""
    raws = [raw_task("tests.add", i, 0) for i in range(3)]
    manager.submit(raws)
    epoch = manager.register_worker("w1", pid=1, host="h")
    claimed = manager.claim("w1", epoch, 3)
    assert manager.release("w1", epoch, claimed[1:]) == 2
    other = manager.register_worker("w2", pid=1, host="h")
    assert set(manager.claim("w2", other, 2)) == set(claimed[1:])


def test_submit_is_counted_with_the_queue(manager):
    """total_work_created moves with the queue in one step."""
    manager.submit([raw_task() for _ in range(2500)])
    assert manager.get_counter("total_work_created") == 2500
    assert manager.queue_depths()["pending"] == 2500


def _contend(variant, settings, url, worker_id, rounds, results):
    state = build_manager(variant, settings, url)
    won = lost = 0
    for i in range(rounds):
        version = int(state.get_worker_state(worker_id)["version"])
        if state.update_worker_state(worker_id, {"last_writer": os.getpid(), "round": i}, expected_version=version):
            won += 1
        else:
            lost += 1
    results.put((won, lost))
    state.close()


@pytest.mark.parametrize("variant", IMPLEMENTATIONS)
def test_stale_versions_are_refused_under_multiprocess_contention(request, settings, variant):
    """Four processes race optimistic updates on one state: every success is one version."""
    url = server_url(request, variant)
    state = build_manager(variant, settings, url)
    state.register_worker("shared", pid=1, host="h")
    start = int(state.get_worker_state("shared")["version"])
    results = multiprocess.Queue()
    rounds = 100 if variant == "file" else 400
    procs = [
        multiprocess.Process(target=_contend, args=(variant, settings, url, "shared", rounds, results))
        for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    won = sum(w for w, _ in outcomes)
    lost = sum(lost for _, lost in outcomes)
    assert won + lost == 4 * rounds
    assert lost > 0, "no contention observed; the test proves nothing"
    assert int(state.get_worker_state("shared")["version"]) == start + won
    state.close()


def test_a_task_that_crashed_a_worker_is_claimed_alone(manager):
    """Suspects (crash count > 0) travel alone, so later crashes are charged to them only."""
    innocent = [raw_task("tests.add", i, 0) for i in range(3)]
    suspect = Task(name="tests.add", args=(9, 9), crashes=1).to_json()
    manager.submit([innocent[0], suspect, innocent[1], innocent[2]])
    epoch = manager.register_worker("w1", pid=1, host="h")
    if fifo(manager):
        assert manager.claim("w1", epoch, 16) == [innocent[0]]  # stops before the suspect
        assert manager.claim("w1", epoch, 16) == [suspect]  # then the suspect, alone
        assert manager.claim("w1", epoch, 16) == innocent[1:]
    else:
        batches = claim_all(manager, "w1", epoch)
        assert [suspect] in batches and sorted(sum(batches, [])) == sorted([suspect, *innocent])


def test_audit_is_exact_while_workers_settle(db_path):
    """An audit taken in the middle of a busy run agrees with itself (one atomic read)."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=2)) as orch:
        orch.submit_many("tests.add", [(1, 1)] * 20000, results=False)
        audits = []
        while orch.pending():
            audits.append(orch.audit())
        assert audits and all(a["ok"] for a in audits), [a["checks"] for a in audits if not a["ok"]][:1]


def _drain(variant, settings, url, worker_id, results):
    state = build_manager(variant, settings, url)
    epoch = state.register_worker(worker_id, pid=os.getpid(), host="h")
    seen = []
    while True:
        claimed = state.claim(worker_id, epoch, 8, divisor=4)
        if not claimed:
            break
        seen.extend(Task.from_json(raw).id for raw in claimed)
        state.settle(worker_id, epoch, [ok(raw) for raw in claimed])
    results.put(seen)
    state.close()


@pytest.mark.parametrize("variant", IMPLEMENTATIONS)
def test_concurrent_claimers_take_and_count_each_task_once(request, settings, variant):
    """Four processes drain one queue at once: every task is claimed and counted exactly once."""
    url = server_url(request, variant)
    state = build_manager(variant, settings, url)
    raws = [raw_task("tests.add", i, i) for i in range(400)]
    state.submit(raws)
    results = multiprocess.Queue()
    procs = [
        multiprocess.Process(target=_drain, args=(variant, settings, url, f"w{i}", results)) for i in range(4)
    ]
    for proc in procs:
        proc.start()
    seen = [task_id for _ in procs for task_id in results.get(timeout=120)]
    for proc in procs:
        proc.join(timeout=30)
    assert sorted(seen) == sorted(Task.from_json(raw).id for raw in raws)
    assert state.get_counter("total_work_completed") == 400
    assert state.stream_tail(keys.WORK_COMPLETIONS).last["n"] == "400"
    assert state.audit()["ok"]
    state.close()


def test_a_partition_key_runs_one_task_at_a_time_in_order(lockfree_manager):
    """Keyed tasks wait in their lane: one per key is claimable; settling it releases the next."""
    a1, a2 = (Task(name="tests.add", args=(i, 0), partition_key="repo-a").to_json() for i in (1, 2))
    b1 = Task(name="tests.add", args=(9, 0), partition_key="repo-b").to_json()
    lockfree_manager.submit([a1, a2, b1])
    assert lockfree_manager.queue_depths()["laned"] == 1
    epoch = lockfree_manager.register_worker("w1", pid=1, host="h")
    claimed = lockfree_manager.claim("w1", epoch, 16)
    assert claimed == [a1, b1]  # a2 waits behind a1
    assert lockfree_manager.claim("w1", epoch, 16) == []
    lockfree_manager.settle("w1", epoch, [ok(a1)])
    assert lockfree_manager.claim("w1", epoch, 16) == [a2]
    lockfree_manager.settle("w1", epoch, [ok(b1), ok(a2)])
    assert lockfree_manager.queue_depths()["laned"] == 0 and lockfree_manager.audit()["ok"]


def test_a_reclaimed_keyed_task_keeps_its_place(lockfree_manager):
    """A keyed task returned by a takeover still runs before the key's later tasks."""
    a1, a2 = (Task(name="tests.add", args=(i, 0), partition_key="k").to_json() for i in (1, 2))
    lockfree_manager.submit([a1, a2])
    epoch = lockfree_manager.register_worker("w1", pid=1, host="h")
    assert lockfree_manager.claim("w1", epoch, 16) == [a1]
    lockfree_manager.reclaim("w1", max_crashes=3)
    other = lockfree_manager.register_worker("w2", pid=1, host="h")
    (again,) = lockfree_manager.claim("w2", other, 16)
    assert Task.from_json(again).args == (1, 0)  # a1 again (crash count raised), not a2


@pytest.mark.parametrize("variant", ["locked", "file"])
def test_partition_keys_are_refused_where_unsupported(request, settings, variant):
    """The baseline and file states refuse keyed tasks instead of running them unordered."""
    state = build_manager(variant, settings, server_url(request, variant))
    keyed = Task(name="tests.add", args=(1, 0), partition_key="k").to_json()
    with pytest.raises(ConfigurationError, match="partition keys"):
        state.submit([keyed])
    assert state.get_counter("total_work_created") == 0
    state.close()
