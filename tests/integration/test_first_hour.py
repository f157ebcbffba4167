"""A new user's first hour (issue 19): mistakes are caught when they are made, and the
watchers outlive the runs they watch."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

from orchestrator_mp import ContinuousOrchestrator, Settings, open_state
from orchestrator_mp.cli.run import summarize_ids, warn_about_many_workers
from orchestrator_mp.exceptions import ConfigurationError
from orchestrator_mp.models import Task
from orchestrator_mp.server import RUNTIME_PREFIX, remove_stale_runtime_dirs
from tests.helpers import CLI, LineReader, run_cli, run_cli_json, wait_for
from tests.integration.test_readme import free_port


def test_an_unknown_task_name_is_caught_at_enqueue(tmp_path):
    """enqueue with --import refuses a name no module registered; without --import it says the
    name was not checked (before: exit 0, dead-lettered later as unknown_task)."""
    refused = run_cli("enqueue", "nosuchtask", "--import", "json", cwd=tmp_path)
    assert refused.returncode == 2 and "'nosuchtask' is not registered" in refused.stderr
    assert refused.stdout == ""
    warned = run_cli("enqueue", "nosuchtask", cwd=tmp_path)
    assert warned.returncode == 0 and "not registered here, so its name is not checked" in warned.stderr
    known = run_cli("enqueue", "demo", "--args", "[1]", cwd=tmp_path)
    assert known.returncode == 0 and "not checked" not in known.stderr


@pytest.mark.parametrize("command", ["monitor", "status", "enqueue demo", "run --demo 1"])
def test_a_database_in_a_missing_directory_is_refused_at_once(tmp_path, command):
    """--db in a directory that does not exist is one line and exit 2 (monitor used to wait forever)."""
    result = run_cli(*command.split(), "--db", str(tmp_path / "missing" / "x.db"), cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"its directory {tmp_path / 'missing'} does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["status", "run --demo 1"])
def test_a_database_that_is_a_directory_is_refused_in_one_line(tmp_path, command):
    """--db naming a directory says so (before: redis-server's log, 'Short read or OOM loading DB')."""
    result = run_cli(*command.split(), "--db", str(tmp_path), cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "is a directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_library_names_the_database_not_a_command_line_flag(tmp_path):
    """ContinuousOrchestrator(db=...) in a missing directory: a ConfigurationError about the
    database, not about a `--db` flag the library user never typed."""
    with pytest.raises(ConfigurationError) as info:
        ContinuousOrchestrator(db=str(tmp_path / "missing" / "jobs.db")).start()
    assert "does not exist" in str(info.value) and "--db" not in str(info.value)


def test_many_workers_are_warned_about_and_their_ids_summarised(capsys):
    """Far more workers than CPUs is a warning; a long list of ids is summarised."""
    warn_about_many_workers(10_000)
    assert "worker processes on" in capsys.readouterr().err
    warn_about_many_workers(2)
    assert capsys.readouterr().err == ""
    ids = [f"h:1:{i}" for i in range(300)]
    assert summarize_ids(ids) == "h:1:0, h:1:1, h:1:2, h:1:3, ... (292 more), h:1:296, h:1:297, h:1:298, h:1:299"
    assert summarize_ids(ids[:3]) == "h:1:0, h:1:1, h:1:2"


@pytest.mark.slow
def test_ctrl_c_while_a_large_demo_is_submitted_stops_submitting(tmp_path):
    """SIGINT during `run --demo 200000` stops the submission at once (a chunk at most), and
    what was submitted stays accounted for (before: the whole demo was submitted first)."""
    env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([*CLI, "run", "--workers", "1", "--demo", "200000", "--demo-ms", "1"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    err = LineReader(proc.stderr)
    try:
        err.wait_for(lambda line: line.startswith("progress:") or "worker(s) started" in line, what="the start")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    status = run_cli_json("status", cwd=tmp_path)
    created = status["counters"]["total_work_created"]
    assert created < 200_000, created
    assert status["consistent"] is True


@pytest.mark.slow
def test_watchers_outlive_many_short_runs(tmp_path):
    """status --watch and the metrics exporter stay up across 12 runs that start and stop
    under them, and every scrape answers (up 0 or 1, never a 500)."""
    env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING"}
    port = free_port()
    watcher = subprocess.Popen([*CLI, "status", "--watch", "--json", "--interval", "0.02"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    exporter = subprocess.Popen([*CLI, "metrics", "--port", str(port)], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    exporter_err = LineReader(exporter.stderr)
    scrapes: list[int] = []
    stop = threading.Event()

    def scrape():
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                    scrapes.append(response.status)
            except urllib.error.HTTPError as exc:
                scrapes.append(exc.code)
            except OSError:
                pass

    scraper = threading.Thread(target=scrape)
    try:
        exporter_err.wait_for(lambda line: "serving Prometheus metrics on" in line, what="the exporter")
        scraper.start()
        for _ in range(12):
            run_cli("run", "--workers", "1", "--demo", "20", cwd=tmp_path, check=True)
        wait_for(lambda: len(scrapes) > 12, timeout=60, what="scrapes")
        assert watcher.poll() is None, "status --watch died"
        assert exporter.poll() is None, "the exporter died"
    finally:
        stop.set()
        if scraper.is_alive():
            scraper.join()
        for proc in (watcher, exporter):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    assert set(scrapes) == {200}, sorted(set(scrapes))


def test_status_counts_every_waiting_task_in_its_table(tmp_path):
    """Plain status shows delayed tasks beside pending ones, so the line adds up to what
    was created (before: only in --json)."""
    run_cli("enqueue", "demo", "--args", "[1]", cwd=tmp_path, check=True)
    with open_state(Settings(db_path=str(tmp_path / "orchestrator_mp.db"))) as state:
        state.submit([Task(name="demo", args=(2,)).to_json()], delay_s=3600)
    shown = run_cli("status", cwd=tmp_path, check=True).stdout
    assert "queue: 1 pending, 0 in flight, 1 delayed, 0 dead-lettered" in shown


def test_runtime_folders_of_servers_that_are_gone_are_removed(server):
    """A parent killed outright leaves its orchestrator_mp-* folder (socket, config, log)
    in the temp directory; a start removes those whose socket answers nobody, and keeps
    the live ones (before: they piled up)."""
    base = tempfile.gettempdir()
    old = time.time() - 3600
    empty = tempfile.mkdtemp(prefix=RUNTIME_PREFIX)
    dead = tempfile.mkdtemp(prefix=RUNTIME_PREFIX)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(dead, "redis.sock"))  # a socket file nobody listens on
    listener.close()
    young = tempfile.mkdtemp(prefix=RUNTIME_PREFIX)  # may be a server starting up
    for path in (empty, dead, server.runtime_dir):
        os.utime(path, (old, old))
    try:
        remove_stale_runtime_dirs()
        assert not os.path.exists(empty) and not os.path.exists(dead)
        assert os.path.isdir(young) and os.path.isdir(server.runtime_dir)  # the live one answers
        assert os.path.dirname(server.runtime_dir) == base
    finally:
        shutil.rmtree(young, ignore_errors=True)


def test_redis_cli_on_a_file_database_says_there_is_no_server(tmp_path):
    """redis-cli on a database of the file state is one clear line, not an AttributeError."""
    run_cli("run", "--state", "file", "--workers", "1", "--demo", "2", cwd=tmp_path, check=True)
    result = run_cli("redis-cli", "PING", cwd=tmp_path)
    assert result.returncode == 2 and "nothing for redis-cli" in result.stderr
    assert "Traceback" not in result.stderr
