"""Retries, dead letters, time limits, poison pills and bad input, with real processes."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time

import pytest
import redis

from orchestrator_mp import ContinuousOrchestrator, EmbeddedServer, keys
from orchestrator_mp.exceptions import PayloadError, ServerError
from orchestrator_mp.retry import backoff_delay
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks before workers fork)
from tests.helpers import CLI, LineReader, run_cli, run_cli_json, settings_for, wait_for


def _errors(orch):
    return [fields for _, fields in orch.state.read_stream(keys.WORK_ERRORS, count=1000)]


def test_failures_are_retried_with_backoff_until_success(db_path, tmp_path):
    """A task failing twice, with retries left, completes on its third run: counted once."""
    settings = settings_for(db_path, workers=2, retry_backoff_s=0.05)
    with ContinuousOrchestrator(settings=settings) as orch:
        orch.submit("tests.fail_times", str(tmp_path), "k", 2)
        assert orch.wait(timeout=30)
        counters, errors, audit = orch.counters(), _errors(orch), orch.audit()
    assert counters["total_work_completed"] == 1
    assert counters["total_errors"] == 2 and counters["total_retried"] == 2
    assert counters["total_dead_lettered"] == 0
    assert [e["retry"] for e in errors] == ["1", "1"]
    assert audit["ok"], audit


def test_exhausted_retries_end_in_the_dead_letter_queue(db_path, tmp_path):
    """After max_retries the failure is parked with its category, message and traceback."""
    settings = settings_for(db_path, workers=1, retry_backoff_s=0.02)
    with ContinuousOrchestrator(settings=settings) as orch:
        orch.submit("tests.fail_times", str(tmp_path), "k", 99)
        assert orch.wait(timeout=30)
        (entry,) = orch.state.dead_letters()
        counters = orch.counters()
    assert counters["total_errors"] == 4  # the first run and 3 retries
    assert entry["category"] == "task_error"
    assert "attempt 4 of k fails on purpose" in entry["message"]
    assert "Traceback" in entry["traceback"]
    assert '"retries":3' in entry["task"]


def test_backoff_grows_exponentially_with_jitter():
    """Delays double per retry, jittered between half and all of the ceiling, capped."""
    settings = settings_for("x.db", retry_backoff_s=1.0, retry_backoff_max_s=8.0)
    for retries, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (10, 8.0)]:
        delays = [backoff_delay(retries, settings) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 10  # jittered, not constant


@pytest.mark.parametrize("shards", [None, 3], ids=["plain", "sharded"])
def test_time_limit_kills_the_worker_and_dead_letters_as_timeout(db_path, shards):
    """A task past its time limit is killed with its worker; the others finish."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=2, batch_size=1, shards=shards)) as orch:
        orch.submit("tests.slow_limited", 30)
        orch.submit_many("tests.add", [(1, 1)] * 20)
        assert orch.wait(timeout=30)
        (entry,) = orch.state.dead_letters()
        counters = orch.counters()
        # The takeover settles the task before the kill; the replacement follows the death.
        wait_for(lambda: orch.supervisor.timeouts == 1 and len(orch.worker_ids()) == 3, timeout=30,
                 what="the killed worker's replacement")
    assert entry["category"] == "timeout" and "time limit" in entry["message"]
    assert counters["total_work_completed"] == 20


@pytest.mark.parametrize("shards", [None, 3], ids=["plain", "sharded"])
def test_a_finished_time_limited_task_leaves_no_deadline_behind(db_path, shards):
    """Quick time-limited tasks (some in shards other than the worker's home one) clear
    their published deadline: nobody is killed once the limit has passed."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1, shards=shards)) as orch:
        orch.submit_many("tests.slow_limited", [(0.01,)] * 9)
        assert orch.wait(timeout=30)
        time.sleep(0.5 + 0.5)  # past the 0.5 s limit of the last task
        timeouts, deaths = orch.supervisor.timeouts, len(orch.supervisor.deaths)
        (worker_id,) = orch.worker_ids()
        deadline = orch.state.get_worker_state(worker_id).get("deadline", "")
    assert timeouts == 0 and deaths == 0 and deadline == ""


@pytest.mark.parametrize("shards", [None, 3], ids=["plain", "sharded"])
def test_poison_pill_is_dead_lettered_after_max_crashes(db_path, shards):
    """A task that kills every worker running it stops looping after max_crashes."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1, max_crashes=3, shards=shards)) as orch:
        orch.submit("tests.always_crash")
        assert orch.wait(timeout=60)
        (entry,) = orch.state.dead_letters()
        deaths = len(orch.supervisor.deaths)
        audit = orch.audit()
    assert entry["category"] == "poison" and "crashed 3 workers" in entry["message"]
    assert deaths == 3
    assert audit["ok"], audit


def test_a_crashing_task_is_retried_on_another_worker(db_path, tmp_path):
    """A task that killed its worker once runs again and completes, counted once."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=2)) as orch:
        orch.submit("tests.crash_once", str(tmp_path), "a")
        assert orch.wait(timeout=30)
        counters = orch.counters()
    assert counters["total_work_completed"] == 1 and counters["total_requeued"] == 1


def test_result_that_is_not_json_is_a_bad_result(db_path):
    """A result that cannot be stored as JSON is a categorised failure, not a crash."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
        orch.submit("tests.bad_result")
        assert orch.wait(timeout=30)
        (entry,) = orch.state.dead_letters()
    assert entry["category"] == "bad_result" and "not JSON-serialisable" in entry["message"]


def test_dlq_cli_lists_retries_and_purges(tmp_path):
    """dlq list/retry/purge work on a database, with and without --json."""
    run_cli_json("run", "--workers", "1", "--demo", "20", "--demo-fail-rate", "0.25", cwd=tmp_path)
    listing = run_cli_json("dlq", "list", cwd=tmp_path)
    assert listing["total"] == 5 and {e["category"] for e in listing["entries"]} == {"task_error"}
    assert "DemoFailure" in run_cli("dlq", "list", cwd=tmp_path, check=True).stdout
    first = listing["entries"][0]["task_id"]
    assert run_cli_json("dlq", "retry", first, cwd=tmp_path) == {"retried": 1, "skipped": 0}
    missing = run_cli("dlq", "retry", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "no dead letter with id nope" in missing.stderr
    assert run_cli_json("dlq", "purge", "--all", cwd=tmp_path) == {"purged": 4}
    status = run_cli_json("status", cwd=tmp_path)
    assert status["queues"]["pending"] == 1 and status["queues"]["dead_letter"] == 0
    assert status["consistent"] is True
    # The retried task runs again (and fails again, deterministically).
    report = run_cli_json("run", "--workers", "1", "--demo", "0", cwd=tmp_path)
    assert report["run"]["errors"] == 1 and report["consistent"] is True


def test_unwritable_db_directory_is_a_clear_error(tmp_path):
    """A database in a read-only directory is refused before anything starts."""
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(ServerError, match="not writable"):
        EmbeddedServer(str(locked / "x.db")).start()


def test_unwritable_db_file_is_a_clear_error(tmp_path):
    """A database file that cannot be written is refused with its path (as any user): a
    directory where the file should be is a configuration error, said in one line."""
    db = tmp_path / "x.db"
    db.mkdir()  # a directory where the file should be: no user can write it as a file
    result = run_cli("run", "--workers", "1", "--demo", "1", "--db", str(db), cwd=tmp_path)
    assert result.returncode == 2
    assert "x.db is a directory" in result.stderr and "error" in result.stderr


def test_corrupted_db_is_a_clear_error_and_nothing_is_overwritten(tmp_path):
    """A damaged append-only file stops the start with the server's own reason."""
    db = tmp_path / "x.db"
    with EmbeddedServer(str(db)) as server:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
    aof = tmp_path / "x.db.aof"
    # Damage at the start, not a torn last command (which Redis trims and loads).
    aof.write_bytes(b"this is not an append-only file\r\n" + aof.read_bytes())
    before = aof.read_bytes()
    result = run_cli("status", "--db", str(db), cwd=tmp_path)
    assert result.returncode == 3
    assert "redis-server exited" in result.stderr and "AOF" in result.stderr
    assert aof.read_bytes() == before


def test_missing_or_broken_redis_server_binary_falls_back_to_the_file_state(tmp_path):
    """A missing or broken redis-server binary: a warning naming it, then the run completes
    on the file state (data a working server cannot load stays an error: see the test above)."""
    broken = tmp_path / "redis-server"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    for index, binary in enumerate((str(tmp_path / "missing"), str(broken))):
        workdir = tmp_path / f"run{index}"
        workdir.mkdir()
        result = run_cli("run", "--workers", "1", "--demo", "3", "--json", cwd=workdir,
                         env={"ORCHESTRATOR_MP_REDIS_SERVER": binary})
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["state"] == "file" and report["consistent"] is True
        assert report["run"]["completed"] == 3
        assert binary in result.stderr and "falling back to the file state" in result.stderr


def test_oversized_payload_is_refused_at_the_default_limit(db_path):
    """A task larger than the documented default limit (1 MiB) is refused with its size."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
        with pytest.raises(PayloadError, match="over the limit of 1048576"):
            orch.submit("tests.add", "x" * 1_100_000, "y")
        assert orch.counters()["total_work_created"] == 0


def test_graceful_stop_hands_work_back_and_run_reports_what_remains(tmp_path):
    """SIGTERM mid-demo: running tasks finish, the rest stay queued, exit 130 says how many."""
    env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([*CLI, "run", "--workers", "2", "--demo", "3000", "--demo-ms", "5"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while not any(line.startswith("progress:") for line in lines):
            lines.append(proc.stderr.readline())
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "remain queued and resume on the next start" in rest
    status = run_cli_json("status", cwd=tmp_path)
    assert status["active_workers"] == [] and status["queues"]["inflight"] == 0
    assert status["queues"]["pending"] > 0 and status["consistent"] is True
    report = run_cli_json("run", "--workers", "2", "--demo", "0", cwd=tmp_path)
    assert report["total_work_completed"] == 3000 and report["consistent"] is True


def test_second_signal_kills_workers_at_once_and_loses_nothing(tmp_path):
    """Ctrl-C twice: the warm stop is cut short, workers are killed, their tasks requeued."""
    env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([*CLI, "run", "--workers", "2", "--demo", "40", "--demo-ms", "3000"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    err = LineReader(proc.stderr)
    try:
        err.wait_for(lambda line: line.startswith("progress:"), what="progress")
        proc.send_signal(signal.SIGINT)
        err.wait_for(lambda line: line.startswith("stopping:"), what="the warm stop to begin")
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert proc.wait(timeout=30) == 130
        stopped_in = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stopped_in < 2.5  # not the 3 s the running tasks need, nor the 10 s deadline
    status = run_cli_json("status", cwd=tmp_path)
    assert status["queues"]["inflight"] == 0 and status["consistent"] is True
    assert status["queues"]["pending"] == 40 - status["counters"]["total_work_completed"]
