"""Results for callers: task handles, the Executor, and coroutine tasks (real processes)."""
from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pytest

from orchestrator_mp import ContinuousOrchestrator, OrchestratorExecutor, TaskFailed
from orchestrator_mp.exceptions import UnknownTaskError
from tests import tasks_for_tests
from tests.helpers import run_cli, settings_for, wait_for


def test_handle_gives_status_result_and_exception(db_path):
    """submit returns a handle: status moves to done, result() returns the value."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
        slow = orch.submit("tests.echo_after", {"a": [1, 2]}, 300)
        assert slow.status() in ("queued", "running")
        assert slow.result(timeout=10) == {"a": [1, 2]}
        assert slow.status() == "done" and slow.done()
        assert slow.exception(timeout=1) is None
        assert orch.handle(slow.id).result(timeout=0.1) == {"a": [1, 2]}
        with pytest.raises(TimeoutError):
            orch.submit("tests.echo_after", 1, 2000).result(timeout=0.2)


def test_failed_task_raises_task_failed_with_remote_traceback(db_path):
    """A failure arrives as TaskFailed: type, message and traceback text, never an object."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
        handle = orch.submit("tests.fail", "kaput")
        with pytest.raises(TaskFailed) as info:
            handle.result(timeout=10)
        assert handle.status() == "failed"
        error = handle.exception(timeout=1)
    failure = info.value
    assert failure.error_type == "ValueError" and failure.category == "task_error"
    assert "kaput" in failure.remote_message
    assert 'raise ValueError(message)' in failure.remote_traceback
    assert "Remote traceback" in str(failure)
    assert isinstance(error, TaskFailed) and error.task_id == handle.id


def test_dead_lettered_tasks_resolve_their_handles(db_path):
    """Poison pills and unknown names end the wait too, as dead_lettered."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1), strict_names=False) as orch:
        poison = orch.submit("tests.always_crash")
        unknown = orch.submit("no.such.task")
        for handle, category in ((poison, "poison"), (unknown, "unknown_task")):
            with pytest.raises(TaskFailed) as info:
                handle.result(timeout=30)
            assert info.value.category == category and handle.status() == "dead_lettered"


def test_result_is_the_counted_one_after_a_crash(db_path, tmp_path):
    """A task re-run after its worker crashed stores the result of the counted run."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
        handle = orch.submit("tests.crash_once", str(tmp_path), "k")
        assert handle.result(timeout=30) == "k"
        assert orch.counters()["total_work_completed"] == 1


def test_results_expire_after_their_retention(db_path):
    """Stored results are dropped after result_ttl_s; the handle then says unknown."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1, result_ttl_s=0.5)) as orch:
        handle = orch.submit("tests.add", 2, 3)
        assert handle.result(timeout=10) == 5
        wait_for(lambda: handle.status() == "unknown", timeout=5, what="the result to expire")


def test_result_command_reads_from_another_process(tmp_path):
    """`result ID` prints a result stored by a live orchestrator, from a separate process."""
    db = str(tmp_path / "shared.db")
    with ContinuousOrchestrator(settings=settings_for(db, workers=1)) as orch:
        done = orch.submit("tests.add", 20, 22)
        failed = orch.submit("tests.fail", "nope")
        assert done.wait(10) and failed.wait(10)
        ok = run_cli("result", done.id, "--db", db, cwd=tmp_path)
        bad = run_cli("result", failed.id, "--db", db, cwd=tmp_path)
        waiting = orch.submit("tests.echo_after", "late", 500)
        blocked = run_cli("result", waiting.id, "--db", db, "--wait", "20", cwd=tmp_path)
        missing = run_cli("result", "0" * 32, "--db", db, cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.strip() == "42"
    assert bad.returncode == 1 and "ValueError: nope" in bad.stderr and "Traceback" in bad.stderr
    assert blocked.returncode == 0 and blocked.stdout.strip() == '"late"'
    assert missing.returncode == 2 and "never submitted" in missing.stderr


def test_unregistered_function_is_refused(db_path):
    """Only registered functions can be submitted, by name or by function."""

    def not_registered(x):
        return x

    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
        with pytest.raises(UnknownTaskError):
            orch.submit(not_registered, 1)


# -- the Executor ------------------------------------------------------------------------------
def test_executor_map_keeps_order_and_supports_chunks(db_path):
    """map yields results in call order, with or without chunksize, like the standard pool."""
    with OrchestratorExecutor(max_workers=2, db=db_path) as executor:
        assert list(executor.map(tasks_for_tests.square, range(200))) == [x * x for x in range(200)]
        assert list(executor.map(tasks_for_tests.add, range(50), range(50), chunksize=7)) == [2 * x for x in range(50)]
        future = executor.submit(tasks_for_tests.add, 1, b=2)
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(timeout=10) == 3


def test_executor_map_timeout_and_failures(db_path):
    """map raises TimeoutError past its deadline and the remote error for a failed call."""
    with OrchestratorExecutor(max_workers=1, db=db_path) as executor:
        results = executor.map(tasks_for_tests.echo_after, ["a", "b"], [1500, 1500], timeout=0.3)
        with pytest.raises(TimeoutError):
            list(results)
        failing = executor.submit(tasks_for_tests.fail, "in executor")
        with pytest.raises(TaskFailed, match="in executor"):
            failing.result(timeout=10)


def test_executor_shutdown_cancels_queued_futures(db_path):
    """shutdown(cancel_futures=True) withdraws queued tasks; running ones finish."""
    executor = OrchestratorExecutor(max_workers=1, db=db_path)
    futures = [executor.submit(tasks_for_tests.echo_after, i, 200) for i in range(20)]
    wait_for(lambda: any(f.done() for f in futures), timeout=10, what="a first result")
    counters_before = executor._orch.counters()
    executor.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    finished = [f for f in futures if not f.cancelled()]
    assert cancelled and finished
    assert all(f.result(timeout=0) == futures.index(f) for f in finished)
    assert counters_before["total_work_created"] == 20
    with pytest.raises(RuntimeError):
        executor.submit(tasks_for_tests.square, 1)


def test_future_cancel_withdraws_a_queued_task_but_not_a_running_one(db_path):
    """cancel() succeeds while a task waits in the queue and fails once it runs."""
    with OrchestratorExecutor(max_workers=1, settings=settings_for(db_path, workers=1, batch_size=1)) as executor:
        running = executor.submit(tasks_for_tests.echo_after, "r", 800)
        queued = executor.submit(tasks_for_tests.echo_after, "q", 10)
        wait_for(lambda: executor._orch.handle(executor_ids(executor)[0]).status() == "running", timeout=10,
                 what="the first task to run")
        assert queued.cancel() and queued.cancelled()
        assert not running.cancel()
        assert running.result(timeout=10) == "r"
        counters = executor._orch.counters()
    assert counters["total_cancelled"] == 1 and counters["total_work_completed"] == 1


def executor_ids(executor):
    return sorted(executor._pending, key=lambda task_id: executor._pending[task_id][1])


def test_killed_worker_breaks_nothing_where_process_pool_breaks(db_path):
    """SIGKILL a worker during map: every result still arrives. The standard pool breaks."""
    with OrchestratorExecutor(max_workers=2, settings=settings_for(db_path, workers=2, batch_size=2)) as executor:
        results = executor.map(tasks_for_tests.echo_after, range(150), [10] * 150)
        wait_for(lambda: executor._orch.counters()["total_work_completed"] > 20, what="progress")
        pid = next(iter(executor._orch.supervisor.pids().values()))
        os.kill(pid, signal.SIGKILL)
        assert list(results) == list(range(150))
        assert executor._orch.audit()["ok"]

    with ProcessPoolExecutor(max_workers=2) as pool:
        pool_results = pool.map(tasks_for_tests.echo_after, range(150), [10] * 150)
        wait_for(lambda: pool._processes, what="the pool's processes")  # the map takes > 0.75 s
        os.kill(next(iter(pool._processes)), signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            list(pool_results)


# -- coroutine tasks ---------------------------------------------------------------------------
def test_coroutine_tasks_overlap_inside_one_worker(db_path):
    """Forty 200 ms coroutines on one worker take far less than 8 s: they overlap."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1, batch_size=40)) as orch:
        started = time.monotonic()
        handles = orch.submit_many("tests.async_sleep", [(i, 200) for i in range(40)])
        assert [h.result(timeout=30) for h in handles] == list(range(40))
        elapsed = time.monotonic() - started
        audit = orch.audit()
    assert elapsed < 4.0, elapsed
    assert audit["ok"] and audit["counters"]["total_work_completed"] == 40


def test_coroutine_failures_and_time_limits(db_path):
    """A raising coroutine gives its traceback; one past its limit is cancelled as timeout."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
        failing = orch.submit("tests.async_fail", "missing-key")
        slow = orch.submit("tests.async_slow_limited")
        with pytest.raises(TaskFailed) as raised:
            failing.result(timeout=10)
        with pytest.raises(TaskFailed) as timed_out:
            slow.result(timeout=10)
        deaths = len(orch.supervisor.deaths)
    assert raised.value.error_type == "KeyError" and "async_fail" in raised.value.remote_traceback
    assert timed_out.value.category == "timeout"
    assert deaths == 0  # coroutines are cancelled, not killed with their worker
