"""A server that goes away is back-pressure, never a crash (issue 13, hole 2).

Workers wait out an outage and carry on: none dies, no task is charged a crash it did
not cause, and the steps a lost reply makes them resend (admitting a limited task,
freeing its slot, registering) take effect once."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from orchestrator_mp import ContinuousOrchestrator, keys
from orchestrator_mp.limits import concurrency_limit
from orchestrator_mp.models import Task
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks before workers fork)
from tests.cluster import local_server
from tests.helpers import settings_for, wait_for

pytestmark = pytest.mark.slow


def _crash_reclaims(orch):
    """Takeovers that charged a crash: a worker that died (not stopped, fenced or timed out)."""
    return [fields for _, fields in orch.state.read_stream(keys.WORKER_EVENTS, count=100_000)
            if fields.get("event") == "reclaimed" and fields.get("reason") == "died"]


def test_server_kills_during_capped_tasks_kill_no_worker_and_charge_no_crash(db_path, tmp_path):
    """4,000 capped tasks while the embedded server is SIGKILLed 3 times: every worker
    rides it out, no task is charged a crash, every task completes once.
    (Before: 9 worker deaths and 48 tasks charged a crash.)"""
    submitted = 4000
    settings = settings_for(db_path, workers=4, durability="strict", lease_s=6.0, heartbeat_interval_s=0.5)
    with ContinuousOrchestrator(settings=settings) as orch:
        orch.submit_many("tests.capped", [(str(tmp_path), 0) for _ in range(submitted)])
        done = threading.Event()
        kills = []

        def chaos():
            for _ in range(3):
                progress = orch.counters()["total_work_completed"] if orch.server.is_alive() else 0
                target = progress + 400
                while not done.is_set():
                    try:
                        if orch.counters()["total_work_completed"] >= target:
                            break
                    except Exception:
                        pass
                    time.sleep(0.02)
                if done.is_set():
                    return
                wait_for(lambda: orch.server.is_alive(), timeout=30, what="the server to be back")
                kills.append(orch.server.pid)
                os.kill(orch.server.pid, signal.SIGKILL)
                wait_for(lambda: orch.server.restarts == len(kills) and orch.server.is_alive(),
                         timeout=30, what="the restart")

        killer = threading.Thread(target=chaos)
        killer.start()
        try:
            assert orch.wait(timeout=240), "the run did not drain"
        finally:
            done.set()
            killer.join()
        counters = orch.counters()
        audit = orch.audit()
        deaths = list(orch.supervisor.deaths)
        charged = sum(int(fields.get("requeued", 0)) for fields in _crash_reclaims(orch))
        completions = [f["task_id"] for _, f in orch.state.read_stream(keys.WORK_COMPLETIONS, count=1_000_000)]
    print(f"\nserver SIGKILLed {len(kills)} times under capped tasks: worker deaths {len(deaths)}, "
          f"tasks charged a crash {charged}, completed {counters['total_work_completed']}/{submitted}, "
          f"dead-lettered {counters['total_dead_lettered']}, re-runs absorbed {counters['total_duplicates']}")
    assert len(kills) == 3
    assert deaths == [] and charged == 0
    assert counters["total_work_completed"] == submitted == len(set(completions)) == len(completions)
    assert counters["total_dead_lettered"] == 0
    assert audit["ok"], audit


def test_a_resent_admit_parks_or_admits_a_task_once(state):
    """ADMIT is safe to resend after a lost reply: a parked task is parked once, an admitted
    one holds one slot (before: the resent admit parked a second copy; both ran)."""
    cap = concurrency_limit("one", 1)
    epoch = state.register_worker("w1", pid=1, host="h")
    raws = [Task(name="tests.capped", args=["x", 0]).to_json() for _ in range(2)]
    state.submit(raws)
    first, second = state.claim("w1", epoch, 2)
    limits = state.limits("w1")
    holder_task, parked_task = Task.from_json(first), Task.from_json(second)
    assert limits.admit("w1", epoch, first, holder_task.id, None, cap).run
    assert limits.admit("w1", epoch, first, holder_task.id, None, cap).run  # resent: still its slot
    assert state.redis.zcard(keys.slots_key("one")) == 1
    assert limits.admit("w1", epoch, second, parked_task.id, None, cap).waiting
    again = limits.admit("w1", epoch, second, parked_task.id, None, cap)  # resent: already parked
    assert not again.run
    assert state.redis.lrange(keys.slot_waiters_key("one"), 0, -1) == [second]
    assert state.inflight("w1") == [first]
    assert limits.release(cap, "w1", holder_task.id)
    assert not limits.release(cap, "w1", holder_task.id)  # resent: freed once, one waiter woken
    assert state.queue_depths()["pending"] == 1


def test_a_worker_started_while_the_server_is_down_waits_for_it(db_path, tmp_path):
    """Replacements that start while the server is down (connections refused) wait for
    it instead of dying at registration, which read as a crash loop and ended the run."""
    with local_server(tmp_path / "redis", persistent=True) as server:
        settings = settings_for(db_path, redis_url=server.url, workers=2, lease_s=6.0, heartbeat_interval_s=0.5)
        with ContinuousOrchestrator(settings=settings) as orch:
            orch.submit_many("tests.sleep", [(1,) for _ in range(300)])
            wait_for(lambda: orch.counters()["total_work_completed"] >= 20, what="progress")
            port = server.ports[0]
            server.kill(port)
            started = len(orch.supervisor.started_ids())
            for pid in list(orch.supervisor.pids().values()):
                os.kill(pid, signal.SIGKILL)  # replacements now start against a dead server
            wait_for(lambda: len(orch.supervisor.started_ids()) >= started + 2, timeout=30,
                     what="replacements to start during the outage")
            time.sleep(2.0)  # the outage itself: two seconds of refused connections
            server.restart(port)
            assert orch.wait(timeout=120), "the run did not drain after the server came back"
            counters = orch.counters()
            failure = orch.supervisor.failure
            deaths = len(orch.supervisor.deaths)
            audit = orch.audit()
    print(f"\nserver down 2 s while replacements started: supervisor failure {failure}, worker deaths {deaths} "
          f"(2 killed by the test), completed {counters['total_work_completed']}/300")
    assert failure is None and deaths == 2
    assert counters["total_work_completed"] == 300
    assert audit["ok"], audit
