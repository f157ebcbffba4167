"""The command line as a user meets it: real subprocesses on a temporary directory."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest
import redis

from tests.helpers import CLI, run_cli, run_cli_json, serving, wait_for


def test_run_demo_json_completes_everything_consistently(tmp_path):
    """run --demo --json: all tasks done, counters consistent, every worker worked."""
    report = run_cli_json("run", "--workers", "4", "--demo", "4000", cwd=tmp_path)
    assert report["total_work_created"] == 4000
    assert report["total_work_completed"] == 4000
    assert report["total_errors"] == 0
    assert report["consistent"] is True
    assert report["throughput_per_s"] > 0 and report["elapsed_s"] > 0
    assert len(report["workers"]) == 4
    assert all(w["completed"] > 0 for w in report["workers"].values())
    assert sum(w["completed"] for w in report["workers"].values()) == 4000
    status = run_cli_json("status", cwd=tmp_path)
    assert status["active_workers"] == []
    assert status["counters"]["total_work_completed"] == 4000
    assert status["queues"]["pending"] == 0 and status["queues"]["inflight"] == 0


def test_run_demo_with_failures_and_sleep(tmp_path):
    """--demo-fail-rate fails an exact share, each recorded as an error and dead-lettered."""
    report = run_cli_json(
        "run", "--workers", "2", "--demo", "200", "--demo-ms", "1", "--demo-fail-rate", "0.1", cwd=tmp_path
    )
    assert report["run"] == {"submitted": 200, "completed": 180, "errors": 20, "dead_lettered": 20, "requeued": 0}
    assert report["consistent"] is True


def test_run_human_output_names_socket_and_monitor_line(tmp_path):
    """Without --json, stderr shows the socket and a ready-to-paste redis-cli line; stdout is empty."""
    result = run_cli("run", "--workers", "1", "--demo", "10", "--db", "here.db", cwd=tmp_path, check=True)
    assert result.stdout == ""
    assert re.search(r"socket: /\S+redis\.sock", result.stderr)
    assert re.search(r"watch live: \S+redis-cli -s \S+ -r -1 XREAD BLOCK 0 STREAMS events:stream metrics:stream", result.stderr)
    assert "10 completed" in result.stderr
    assert os.path.exists(tmp_path / "here.db") and os.path.exists(tmp_path / "here.db.aof")


def test_status_human_output(tmp_path):
    """status prints counters and queue depths as readable lines."""
    run_cli("run", "--workers", "1", "--demo", "5", cwd=tmp_path, check=True)
    result = run_cli("status", cwd=tmp_path, check=True)
    assert "active workers: 0" in result.stdout
    assert "total_work_completed=5" in result.stdout
    assert "queue: 0 pending, 0 in flight" in result.stdout


def test_status_without_a_database_is_a_clear_error(tmp_path):
    """status on a path where nothing ran says so, with a non-zero exit."""
    result = run_cli("status", "--db", "missing.db", cwd=tmp_path)
    assert result.returncode == 3
    assert "no database at" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_enqueue_offline_then_run_resumes(tmp_path):
    """enqueue works with no orchestrator running; the next run picks the tasks up."""
    ids = run_cli_json("enqueue", "demo", "--args", "[1]", "--count", "3", cwd=tmp_path)["task_ids"]
    assert len(ids) == 3
    plain = run_cli("enqueue", "demo", "--args", "[2]", cwd=tmp_path, check=True)
    assert re.fullmatch(r"[0-9a-f]{32}\n", plain.stdout)
    status = run_cli_json("status", cwd=tmp_path)
    assert status["queues"]["pending"] == 4 and status["counters"]["total_work_created"] == 4
    report = run_cli_json("run", "--workers", "1", "--demo", "0", cwd=tmp_path)
    assert report["total_work_completed"] == 4


def test_serve_mode_takes_enqueued_work_and_stops_on_sigterm(tmp_path):
    """run without --demo serves: enqueue and status reach it through --db; SIGTERM stops it cleanly."""
    env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([*CLI, "run", "--workers", "2"], cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while not any("serving the queue" in line for line in lines):
            line = proc.stderr.readline()
            assert line, f"run exited early: {''.join(lines)}"
            lines.append(line)
        monitor = next(line for line in lines if line.startswith("watch live: ")).split("watch live: ", 1)[1]
        run_cli("enqueue", "demo", "--args", "[1]", "--count", "20", cwd=tmp_path, check=True)
        wait_for(lambda: run_cli_json("status", cwd=tmp_path)["counters"]["total_work_completed"] == 20,
                 timeout=30, what="the served tasks")
        status = run_cli_json("status", cwd=tmp_path)
        assert len(status["active_workers"]) == 2
        assert all(status["workers"][w]["status"] in ("idle", "busy") for w in status["active_workers"])
        # The printed redis-cli line shows events live (one XREAD, run without -r to end it).
        once = monitor.replace(" -r -1", "").replace("'$'", "$").split()
        watcher = subprocess.Popen(once, stdout=subprocess.PIPE, text=True)
        socket_path = once[once.index("-s") + 1]
        client = redis.Redis(unix_socket_path=socket_path, decode_responses=True)
        try:  # enqueue only once the watcher's XREAD waits for it
            wait_for(lambda: any(c.get("cmd") == "xread" for c in client.client_list()), what="the XREAD to block")
        finally:
            client.close()
        run_cli("enqueue", "demo", "--args", "[2]", cwd=tmp_path, check=True)
        out, _ = watcher.communicate(timeout=20)
        assert "events:stream" in out and "worker" in out
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    status = run_cli_json("status", cwd=tmp_path)
    assert status["active_workers"] == [] and status["counters"]["total_work_completed"] == 21


def test_a_second_run_on_a_live_db_is_refused(tmp_path):
    """Two orchestrators on one db: the second refuses with one clear line."""
    env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING"}
    first = subprocess.Popen([*CLI, "run", "--workers", "1"], cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while "serving the queue" not in first.stderr.readline():
            pass
        second = run_cli("run", "--workers", "1", "--demo", "1", cwd=tmp_path)
        assert second.returncode == 3
        assert f"in use by a live orchestrator (pid {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=30) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--workers", "-1"], "argument --workers: expected a number >= 1"),
        (["run", "--workers", "0"], "argument --workers: expected a number >= 1"),
        (["run", "--demo-fail-rate", "1.5"], "expected a rate between 0 and 1"),
        (["run", "--demo", "ten"], "expected a whole number"),
        (["run", "--demo-ms", "nan"], "expected a finite number"),
        (["enqueue", "demo", "--args", "{"], "not valid JSON"),
        (["enqueue", "demo", "--args", "{}"], "expected a JSON list"),
        (["run", "--bogus"], "unrecognized arguments: --bogus"),
        (["run", "--log-level", "LOUD"], "log_level must be one of"),
        (["run", "--import", "no_such_module_xyz", "--demo", "1"], "--import no_such_module_xyz"),
    ],
)
def test_bad_arguments_give_one_line_and_non_zero_exit(tmp_path, args, message):
    """Each bad value is one line on stderr naming it, exit code 2."""
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("state", ["lockfree", "locked", "file"])
def test_run_demo_on_each_state_kind_is_consistent(tmp_path, state):
    """run --state X --demo N --json: counters consistent; status then reads the same database."""
    report = run_cli_json(
        "run", "--state", state, "--workers", "2", "--demo", "400", "--demo-fail-rate", "0.05", cwd=tmp_path
    )
    assert report["state"] == state
    assert report["run"] == {"submitted": 400, "completed": 380, "errors": 20, "dead_lettered": 20, "requeued": 0}
    assert report["consistent"] is True and all(report["checks"].values())
    assert sum(w["completed"] for w in report["workers"].values()) == 380
    status = run_cli_json("status", cwd=tmp_path)
    assert status["counters"]["total_work_completed"] == 380 and status["consistent"] is True
    assert status["queues"]["dead_letter"] == 20
    assert all(w["status"] == "stopped" for w in status["workers"].values())


@pytest.mark.slow
def test_bench_quick_prints_implementations_side_by_side(tmp_path):
    """bench --quick --json: contention and end-to-end rows per implementation, ratios to lock-free."""
    result = run_cli("bench", "--quick", "--workers", "1,2", "--json", "--plot", "chart.png",
                     cwd=tmp_path, timeout=300, check=True)
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"  # bench --plot draws the chart
    report = json.loads(result.stdout)
    assert {(r["variant"], r["processes"]) for r in report["contention"]} == {
        (v, p) for v in ("lockfree", "locked", "file") for p in (1, 2)
    }
    assert {(r["kind"], r["workers"]) for r in report["end_to_end"]} == {
        (k, n) for k in ("lockfree", "locked", "file") for n in (1, 2)
    }
    assert all(r["consistent"] for r in report["contention"] + report["end_to_end"])
    assert set(report["ratios"]["contention"]["2"]) == {"locked", "file"}
    locked = next(r for r in report["contention"] if r["variant"] == "locked" and r["processes"] == 2)
    assert locked["lock_wait_p99_ms"] >= locked["lock_wait_p50_ms"] > 0 and locked["retries_per_acquire"] >= 0
    assert "lf/locked" in result.stderr and "lf/file" in result.stderr  # the table, beside the JSON
    assert os.listdir(tmp_path) == ["chart.png"]  # every measurement cleaned up after itself


@pytest.mark.slow
def test_bench_check_fails_below_the_minimum_ratio(tmp_path):
    """--check exits 1 when lock-free's advantage is below --min-ratio (here: an impossible one)."""
    result = run_cli(
        "bench", "--quick", "--workers", "2", "--state", "lockfree,locked", "--check", "--min-ratio", "1000",
        cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "check FAILED: lockfree/locked at 2 processes" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "--check"], "--check needs --min-ratio R"),
        (["bench", "--check", "--min-ratio", "2", "--state", "file"], "include both in --state"),
        (["bench", "--workers", "0"], "expected a number >= 1"),
        (["bench", "--state", "lockfree,redis"], "expected some of lockfree,locked,file"),
        (["bench", "--min-ratio", "-1"], "expected a number > 0"),
        (["run", "--state", "sqlite"], "argument --state: invalid choice"),
    ],
)
def test_bench_and_state_arguments_are_checked(tmp_path, args, message):
    """Bad bench / --state arguments: one line naming them, exit code 2."""
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    "command", [[], ["run"], ["enqueue"], ["status"], ["monitor"], ["metrics"], ["redis-cli"], ["bench"]]
)
def test_help_on_every_command(tmp_path, command):
    """--help works everywhere and exits 0."""
    result = run_cli(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_console_script_is_installed(tmp_path):
    """The orchestrator-mp entry point is on PATH after installation."""
    result = subprocess.run(["orchestrator-mp", "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and "orchestrator-mp" in result.stdout


def test_redis_cli_reaches_the_database_live_or_not(tmp_path):
    """redis-cli runs the bundled client on the live owner's socket, or on a temporary server."""
    run_cli("run", "--workers", "1", "--demo", "12", cwd=tmp_path, check=True)
    offline = run_cli("redis-cli", "XLEN", "work_completions", cwd=tmp_path, check=True)
    assert offline.stdout.strip() == "12"
    with serving(tmp_path, workers=1):
        live = run_cli("redis-cli", "--", "-r", "2", "SCARD", "active_workers", cwd=tmp_path, check=True)
        assert live.stdout.split() == ["1", "1"]
    missing = run_cli("redis-cli", "--db", "other.db", "PING", cwd=tmp_path)
    assert missing.returncode == 3 and "no database at" in missing.stderr
