"""The peers runner (benchmarks/peers) works without any peer package installed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from benchmarks.peers import run
from benchmarks.peers.common import PeerError, WorkerProcesses, wait_until

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_peers(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.peers", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
    )


def test_pool_and_orchestrator_mp_side_by_side():
    """--only pool,orchestrator_mp --json: both measured, and the ratio is orchestrator_mp's rate over the peer's."""
    done = run_peers("--only", "pool,orchestrator_mp", "--tasks", "2000", "--repeat", "1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["meta"]["tasks"] == 2000 and result["meta"]["workers"] == 2
    peers = {peer["name"]: peer for peer in result["peers"]}
    assert set(peers) == {"pool", "orchestrator_mp"}
    for peer in peers.values():
        assert peer["status"] == "ok", peer
        assert len(peer["runs"]) == 1 and peer["median_tasks_per_s"] > 0
    assert peers["orchestrator_mp"]["ratio_orchestrator_mp_to_peer"] == 1.0
    expected = peers["orchestrator_mp"]["median_tasks_per_s"] / peers["pool"]["median_tasks_per_s"]
    assert abs(peers["pool"]["ratio_orchestrator_mp_to_peer"] - expected) < 0.01 + expected * 0.01


def test_missing_peer_package_is_skipped_not_a_crash():
    """A peer whose package is not installed is reported as skipped, with the install hint, in the table."""
    outcome = run.load(run.Entry("ghost", "ghost_peer", "no_such_package_for_peers"))
    assert outcome.status == "skipped" and "pip install -e '.[peers]'" in outcome.reason
    table = run.markdown(run.report([outcome], run.metadata(10, 2, 1)))
    assert "| ghost | - | skipped: no_such_package_for_peers is not installed" in table


def test_unknown_peer_name_is_a_usage_error():
    """--only with an unknown name exits 2 and lists the known names."""
    done = run_peers("--only", "nope")
    assert done.returncode == 2
    assert "unknown peer(s) nope" in done.stderr and "orchestrator_mp" in done.stderr


ESCAPING_CHILD = """
import os, signal, sys, time
if os.fork() == 0:
    os.setpgrp()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(sys.argv[1] + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


def test_worker_processes_end_a_descendant_that_left_the_group(tmp_path):
    """WorkerProcesses ends its command and a descendant that left its process group and ignores SIGTERM."""
    pid_file = tmp_path / "escaped.pid"
    argv = [sys.executable, "-c", ESCAPING_CHILD, str(pid_file)]
    with WorkerProcesses(argv, "unix:///unused", str(tmp_path / "log")) as workers:
        deadline = time.monotonic() + 10
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        escaped = psutil.Process(int(pid_file.read_text()))
        workers.check()  # still running: no error
    deadline = time.monotonic() + 5  # killed by PID on exit; reaped by whoever adopted it
    while not _gone(escaped) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _gone(escaped)


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_worker_processes_report_an_exited_command(tmp_path):
    """check() raises PeerError, with the exit status and the log's tail, once the command has exited."""
    argv = [sys.executable, "-c", "print('broken broker URL'); raise SystemExit(3)"]
    with WorkerProcesses(argv, "unix:///unused", str(tmp_path / "log")) as workers:
        with pytest.raises(PeerError, match=r"status 3\)(.|\n)*broken broker URL"):
            wait_until(lambda: 0, 1, time.perf_counter() + 10, workers.check)
