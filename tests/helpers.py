"""Fault helpers and process utilities shared by the tests."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from typing import Any, Callable, Iterator

import psutil
from loguru import logger

from orchestrator_mp.config import Settings
from orchestrator_mp.log import PACKAGE

CLI = [sys.executable, "-m", "orchestrator_mp"]


def settings_for(db_path: str, **fields: Any) -> Settings:
    """Test settings: small timeouts, quiet logs."""
    values = {"db_path": str(db_path), "workers": 2, "shutdown_timeout_s": 10.0, "log_level": "WARNING"}
    values.update(fields)
    return Settings(**values)


@contextlib.contextmanager
def library_logs(level: str = "WARNING") -> Iterator[list[str]]:
    """The package's log lines at ``level`` and above, collected while inside: enabled for
    the block as an application would (``logger.enable``), then disabled again."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level=level)
    logger.enable(PACKAGE)
    try:
        yield lines
    finally:
        logger.disable(PACKAGE)
        logger.remove(sink)


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


class LineReader:
    """Collects a pipe's lines on a thread so tests can wait for one with a timeout."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[str], Any], timeout: float = 20.0, what: str = "a line") -> str:
        """The first line (seen so far or arriving within ``timeout``) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; got:\n" + "\n".join(self.lines))
                self._cond.wait(left)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


@contextlib.contextmanager
def serving(cwd: str | os.PathLike, *args: str, workers: int = 2) -> Iterator[subprocess.Popen]:
    """``run --workers N`` serving the queue in ``cwd`` until the block ends (SIGTERM, exit 0)."""
    env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [*CLI, "run", "--workers", str(workers), *args], cwd=cwd, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        seen = []
        while not any("serving the queue" in line for line in seen):
            line = proc.stderr.readline()
            assert line, f"run exited early: {''.join(seen)}"
            seen.append(line)
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@contextlib.contextmanager
def started(*args: str, cwd: str | os.PathLike, stdout: bool = True) -> Iterator[tuple[subprocess.Popen, LineReader, LineReader]]:
    """``python -m orchestrator_mp ARGS`` running in the background, with line readers on
    stdout and stderr; ended by PID (SIGTERM, then SIGKILL) when the block ends."""
    env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([*CLI, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield proc, LineReader(proc.stdout), LineReader(proc.stderr)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_in_pty(*args: str, cwd: str | os.PathLike, timeout: float = 120, columns: int = 120) -> tuple[int, str]:
    """``python -m orchestrator_mp ARGS`` with a pseudo-terminal as stdin, stdout and
    stderr (as a user's terminal); returns the exit code and everything it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING", "TERM": "xterm-256color", "COLUMNS": str(columns)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([*CLI, *args], cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"{args} did not finish within {timeout}s")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side of the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_worker_command(url: str, workers: int, cwd: str | os.PathLike, env: dict | None = None,
                         secret: str | None = None) -> subprocess.Popen:
    """`worker --redis-url URL --workers N` in its own process, once it says it joined."""
    full_env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING", **(env or {})}
    proc = subprocess.Popen([*CLI, "worker", "--redis-url", url, "--workers", str(workers)],
                            cwd=cwd, stderr=subprocess.PIPE, text=True, env=full_env)
    line = proc.stderr.readline()
    assert line.startswith("joined "), line
    assert secret is None or secret not in line
    return proc


def completed_by_process(url: str, cwd: str | os.PathLike) -> dict[str, int]:
    """Tasks completed per command (``host:pid``), from `status --json`."""
    status = run_cli_json("status", "--redis-url", url, cwd=cwd)
    done: dict[str, int] = {}
    for worker_id, info in status["workers"].items():
        prefix = worker_id.rsplit(":", 1)[0]  # host:pid of the command that started it
        done[prefix] = done.get(prefix, 0) + int(info.get("completed", 0))
    return done



_forked_clock_skew = {"seconds": 0.0}


def _skew_this_process() -> None:
    seconds = _forked_clock_skew["seconds"]
    if seconds:
        real = time.time
        time.time = lambda: real() + seconds  # type: ignore[assignment]


os.register_at_fork(after_in_child=_skew_this_process)


@contextlib.contextmanager
def skewed_clocks_in_forked_children(seconds: float) -> Iterator[None]:
    """Processes forked while this is active (workers) see ``time.time()`` off by
    ``seconds``: a host whose clock is wrong. The test process and servers keep theirs."""
    _forked_clock_skew["seconds"] = seconds
    try:
        yield
    finally:
        _forked_clock_skew["seconds"] = 0.0
