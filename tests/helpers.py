"""Fault helpers and process utilities shared by the tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import psutil

from orchestrator_mp.config import Settings

CLI = [sys.executable, "-m", "orchestrator_mp"]


def settings_for(db_path: str, **fields: Any) -> Settings:
    """Test settings: small timeouts, quiet logs."""
    values = {"db_path": str(db_path), "workers": 2, "shutdown_timeout_s": 10.0, "log_level": "WARNING"}
    values.update(fields)
    return Settings(**values)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def sigkill_worker(pid: int) -> None:
    """Kill one worker process outright, as the OOM killer or `kill -9` would."""
    os.kill(pid, signal.SIGKILL)


def crash(exitcode: int = 1) -> None:
    """Task body that kills its own worker without any cleanup."""
    os._exit(exitcode)


def run_cli(*args: str, cwd: str | os.PathLike, timeout: float = 120, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m orchestrator_mp ARGS`` in ``cwd`` and capture its output."""
    full_env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING", **(env or {})}
    result = subprocess.run(
        [*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def run_cli_json(*args: str, cwd: str | os.PathLike, timeout: float = 120) -> dict:
    result = run_cli(*args, "--json", cwd=cwd, timeout=timeout, check=True)
    return json.loads(result.stdout)


def children_of_this_process() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def kill_by_pid(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(processes, timeout=5)


def wait_gone(processes: list[psutil.Process], timeout: float = 10.0) -> tuple[float, list[psutil.Process]]:
    """Poll every 5 ms until each process has exited (zombie counts as exited).

    Returns (seconds until the last one went, those still alive at the timeout).
    """
    started = time.monotonic()
    alive = list(processes)
    while alive and time.monotonic() - started < timeout:
        still = []
        for process in alive:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    still.append(process)
            except psutil.NoSuchProcess:
                pass
        alive = still
        if alive:
            time.sleep(0.005)
    return time.monotonic() - started, alive
