"""ContinuousOrchestrator end to end: real server, real forked workers."""
from __future__ import annotations

import os
import signal
import stat
import time

import pytest
import redis

from orchestrator_mp import ContinuousOrchestrator, keys
from orchestrator_mp import server as server_module
from orchestrator_mp.config import STATE_KINDS
from orchestrator_mp.database import open_state
from orchestrator_mp.exceptions import (
    DatabaseInUse,
    PayloadError,
    ServerError,
    ServerNotRunnable,
    SupervisorClosed,
    UnknownTaskError,
)
from orchestrator_mp.state import RedisLockFreeStateManager, state_dir_for
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks before workers fork)
from tests.helpers import library_logs, settings_for, sigkill_worker, wait_for


@pytest.mark.parametrize("state", STATE_KINDS)
@pytest.mark.parametrize("workers", [1, 4])
def test_invariant_holds_for_a_run(db_path, workers, state):
    """total_work_completed == sum of worker counters == completions recorded, on every kind."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=workers, state=state)) as orch:
        orch.submit_many("tests.add", [(i, i) for i in range(3000)])
        assert orch.wait(timeout=60)
        audit = orch.audit()
        per_worker = orch.worker_counters()
    assert audit["ok"], audit
    assert audit["counters"]["total_work_completed"] == 3000
    assert sum(w["completed"] for w in per_worker.values()) == 3000
    assert audit["stream_lengths"][keys.WORK_COMPLETIONS] == 3000


def test_every_worker_gets_work(db_path):
    """A 4-worker run spreads tasks across all four partitions."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=4)) as orch:
        orch.submit_many("tests.sleep", [(1,) for _ in range(400)])
        assert orch.wait(timeout=60)
        per_worker = orch.worker_counters()
    assert len(per_worker) == 4
    assert all(counts["completed"] > 0 for counts in per_worker.values()), per_worker


def test_active_workers_empty_after_shutdown_and_versions_grow(db_path):
    """A clean stop deregisters every worker; each worker's version grew with its work."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=2, batch_size=2)) as orch:
        orch.submit_many("tests.sleep", [(5,)] * 100)  # slow enough that both workers take some
        assert orch.wait(timeout=60)
        url, ids = orch.url, orch.worker_ids()
        orch.stop_workers()
        state = RedisLockFreeStateManager(url)
        assert state.active_workers() == set()
        states = state.batch_get_worker_states(ids)
        state.close()
    assert all(s["status"] == "stopped" for s in states.values())
    assert all(int(s["version"]) > 2 for s in states.values())


def test_restart_on_the_same_db_resumes_pending_tasks(db_path):
    """Tasks queued but not run survive a clean stop and run on the next start."""
    with ContinuousOrchestrator(settings=settings_for(db_path), enable_parallel=False) as orch:
        orch.submit_many("tests.add", [(i, 1) for i in range(500)])
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=2)) as orch:
        assert orch.wait(timeout=60)
        counters = orch.counters()
    assert counters["total_work_created"] == 500
    assert counters["total_work_completed"] == 500


def test_unknown_task_and_malformed_entry_are_recorded_without_stopping_workers(db_path):
    """Bad queue entries become categorised errors; the workers keep going."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=2), strict_names=False) as orch:
        orch.submit("no.such.task", 1)
        client = redis.Redis.from_url(orch.url, decode_responses=True)
        client.lpush(keys.QUEUE, "this is not json", '{"crashes":0,"id":"x"}')
        client.close()
        orch.submit_many("tests.add", [(1, 1)] * 50)
        assert orch.wait(timeout=60)
        pids = orch.supervisor.pids()
        state = orch.state
        categories = sorted(e["category"] for e in state.dead_letters())
        counters = orch.counters()
        assert all(state.get_worker_state(w)["status"] in ("idle", "busy") for w in pids)
        assert len(orch.supervisor.deaths) == 0
    assert categories == ["bad_payload", "bad_payload", "unknown_task"]
    assert counters["total_errors"] == 3 and counters["total_work_completed"] == 50


def test_failing_tasks_are_dead_lettered_with_traceback(db_path):
    """A task that raises is recorded in work_errors and parked with its traceback."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
        orch.submit("tests.fail", "kaput")
        assert orch.wait(timeout=30)
        (entry,) = orch.state.dead_letters()
    assert entry["category"] == "task_error"
    assert "ValueError: kaput" in entry["message"]
    assert "Traceback" in entry["traceback"] and "raise ValueError" in entry["traceback"]


def test_submit_refuses_bad_input_clearly(db_path):
    """Unregistered names, non-JSON arguments and oversized payloads raise before queueing."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1, max_payload_bytes=1024)) as orch:
        with pytest.raises(UnknownTaskError):
            orch.submit("no.such.task")
        with pytest.raises(PayloadError):
            orch.submit("tests.add", object(), 1)
        with pytest.raises(PayloadError, match="over the limit"):
            orch.submit("tests.add", "x" * 2000, "y")
        assert orch.counters()["total_work_created"] == 0
    with pytest.raises(SupervisorClosed):
        orch.submit("tests.add", 1, 2)


def test_sequential_mode_runs_tasks_in_the_parent(db_path):
    """enable_parallel=False runs through the same state manager, same accounting."""
    with ContinuousOrchestrator(settings=settings_for(db_path), enable_parallel=False) as orch:
        orch.submit_many("tests.add", [(i, i) for i in range(100)])
        assert orch.wait(timeout=30)
        audit = orch.audit()
        assert orch.worker_ids()[0].endswith(":local")
    assert audit["ok"] and audit["counters"]["total_work_completed"] == 100


def test_a_second_orchestrator_on_the_same_db_is_refused(db_path):
    """Two orchestrators never share one database file."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)):
        with pytest.raises(DatabaseInUse, match="in use by a live orchestrator"):
            ContinuousOrchestrator(settings=settings_for(db_path, workers=1)).start()


def test_embedded_server_is_private(db_path):
    """The socket directory is owner-only and the server has no TCP port."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
        directory = os.path.dirname(orch.server.socket_path)
        mode = stat.S_IMODE(os.stat(directory).st_mode)
        client = redis.Redis.from_url(orch.url, decode_responses=True)
        port = client.config_get("port")["port"]
        appendonly = client.config_get("appendonly")["appendonly"]
        client.close()
    assert mode == 0o700
    assert port == "0"
    assert appendonly == "yes"
    assert not os.path.exists(directory)


def paused_holding(state, pids):
    """SIGSTOP each worker in turn; return the first that holds tasks while paused (the
    others are resumed), or None."""
    for worker_id, pid in sorted(pids.items()):
        os.kill(pid, signal.SIGSTOP)
        if state.queue_depths([worker_id])["by_worker"].get(worker_id, 0) > 0:
            return worker_id
        os.kill(pid, signal.SIGCONT)
    return None


@pytest.mark.parametrize("state", STATE_KINDS)
def test_killed_worker_loses_no_task(db_path, state):
    """SIGKILL a worker mid-run: its in-flight tasks come back and every task completes once."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=2, batch_size=4, state=state)) as orch:
        orch.submit_many("tests.sleep", [(10,) for _ in range(400)])
        wait_for(lambda: orch.counters()["total_work_completed"] > 50, what="some progress")
        pids = orch.supervisor.pids()
        # Kill a worker while it holds claimed tasks, so the requeue is certain: paused,
        # it cannot settle between the look and the kill. (A paused worker of the file
        # state may hold the file lock every read needs: there, look without pausing.)
        if state == "file":
            holding = wait_for(lambda: [w for w, n in orch.state.queue_depths(pids)["by_worker"].items() if n >= 2],
                               what="a worker holding tasks")
            worker_id = holding[0]
        else:
            worker_id = wait_for(lambda: paused_holding(orch.state, pids), what="a paused worker holding tasks")
        sigkill_worker(pids[worker_id])
        wait_for(lambda: orch.supervisor.deaths, what="the death to be noticed")
        assert orch.wait(timeout=60)
        audit = orch.audit()
        replacements = len(orch.worker_ids())
    assert audit["ok"], audit
    assert audit["counters"]["total_work_completed"] == 400
    assert audit["counters"]["total_requeued"] >= 1
    assert replacements == 3


def test_delayed_tasks_never_run_early(db_path):
    """submit_with(delay_s=...) waits in the delayed set and runs on time, not before."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=2)) as orch:
        submitted = time.time()
        late = orch.submit_with("tests.now", delay_s=1.0)
        at = orch.submit_with("tests.now", at=submitted + 0.5)
        now = orch.submit("tests.now")
        assert orch.state.queue_depths()["delayed"] == 2
        started = {name: h.result(timeout=10) for name, h in (("late", late), ("at", at), ("now", now))}
    assert started["now"] - submitted < 0.5
    assert submitted + 0.5 <= started["at"] < submitted + 1.0
    assert submitted + 1.0 <= started["late"] < submitted + 1.5


def test_delayed_tasks_survive_a_restart(db_path):
    """A delayed task submitted before a clean stop runs after the next start."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
        handle_id = orch.submit_with("tests.now", delay_s=0.5).id
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
        assert orch.handle(handle_id).result(timeout=10) > 0
        assert orch.audit()["ok"]


def _unrunnable_binaries(tmp_path):
    missing_exec_bit = tmp_path / "plain-file"
    missing_exec_bit.write_text("not a program")
    broken = tmp_path / "broken-server"
    broken.write_text("#!/bin/sh\necho 'cannot execute on this machine' >&2\nexit 126\n")
    broken.chmod(0o755)
    return {"not executable": str(missing_exec_bit), "exits at once": str(broken)}


@pytest.mark.parametrize("case", ["not executable", "exits at once"])
def test_falls_back_to_file_state_when_redis_server_cannot_run(db_path, tmp_path, monkeypatch, case):
    """A redis-server that cannot run: one clear warning, then the same run on the file state."""
    monkeypatch.setattr(server_module, "redis_server_path", lambda: _unrunnable_binaries(tmp_path)[case])
    with library_logs("WARNING") as warnings:
        with ContinuousOrchestrator(settings=settings_for(db_path, workers=2)) as orch:
            assert orch.settings.state == "file" and orch.server is None and orch.url is None
            orch.submit_many("tests.add", [(i, 1) for i in range(300)])
            assert orch.wait(timeout=60)
            audit = orch.audit()
    assert audit["ok"] and audit["counters"]["total_work_completed"] == 300
    assert any("cannot run" in w and "falling back to the file state" in w for w in warnings), warnings
    assert os.path.isdir(state_dir_for(db_path))


def test_data_the_server_cannot_load_is_an_error_not_a_fallback(db_path):
    """Only an unrunnable binary falls back: a server that refuses the data stops the start."""
    with open(db_path + ".aof", "w") as handle:
        handle.write("this is not an append-only file\n")
    with pytest.raises(ServerError) as info:
        ContinuousOrchestrator(settings=settings_for(db_path, workers=1)).start()
    assert not isinstance(info.value, ServerNotRunnable)
    assert not os.path.exists(state_dir_for(db_path))


def test_file_state_keeps_one_owner_per_database(db_path):
    """Without a server the database lock still refuses a second orchestrator, and commands reach the owner."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1, state="file")) as orch:
        orch.submit("tests.add", 1, 2)
        assert orch.wait(timeout=30)
        with pytest.raises(DatabaseInUse, match="in use by a live orchestrator"):
            ContinuousOrchestrator(settings=settings_for(db_path, workers=1, state="file")).start()
        with pytest.raises(DatabaseInUse):
            ContinuousOrchestrator(settings=settings_for(db_path, workers=1)).start()
        with open_state(settings_for(db_path)) as state:
            assert state.kind == "file" and state.get_counter("total_work_completed") == 1
    with open_state(settings_for(db_path), role="status") as state:
        assert state.kind == "file" and state.active_workers() == set()


@pytest.mark.parametrize("state", ["lockfree", "locked"])
def test_commands_open_the_kind_that_wrote_the_database(db_path, state):
    """status and enqueue read a Redis database with the manager that wrote it."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1, state=state)) as orch:
        orch.submit("tests.add", 1, 2)
        assert orch.wait(timeout=30)
        with open_state(settings_for(db_path)) as live:
            assert live.kind == state
    with open_state(settings_for(db_path), role="status") as offline:
        assert offline.kind == state
        states = offline.batch_get_worker_states(offline.known_workers())
        assert states and all(s.get("status") == "stopped" for s in states.values())
