"""Fixtures: a real embedded redis-server per test, and a guard that every test
leaves no child process behind (servers and workers are ended by PID)."""
from __future__ import annotations

import time

import psutil
import pytest

from orchestrator_mp.server import EmbeddedServer
from orchestrator_mp.state import RedisLockFreeStateManager
from tests.helpers import children_of_this_process, kill_by_pid, settings_for


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Fail a test that leaves child processes running (and end them by PID)."""
    before = {p.pid for p in children_of_this_process()}
    yield
    deadline = time.monotonic() + 5
    while True:
        left = [p for p in children_of_this_process() if p.pid not in before and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if left:
        described = [f"{p.pid} {' '.join(p.cmdline()[:3])}" for p in left]
        kill_by_pid(left)
        pytest.fail(f"test left processes running: {described}")


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "test.db")


@pytest.fixture
def settings(db_path):
    return settings_for(db_path)


@pytest.fixture
def server(db_path):
    """A real embedded redis-server on a private socket, stopped (and checked) after."""
    srv = EmbeddedServer(db_path).start()
    pid = srv.pid
    yield srv
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 10, "server took over 10s to stop"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.fixture
def state(server):
    manager = RedisLockFreeStateManager(server.url)
    yield manager
    manager.close()


@pytest.fixture
def chdir_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path
