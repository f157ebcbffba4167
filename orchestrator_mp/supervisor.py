"""The parent's side of the workers: fork, watch, reclaim, replace, stop.

::

    Supervisor (a thread in the parent)
      ├─ fork ──▶ worker_main(w0) ─┐
      ├─ fork ──▶ worker_main(w1) ─┤  each: own Redis client, own partition, heartbeat thread
      │                            │
      ├─ wait(sentinels, wakeup) ◀─┘  a sentinel is ready the moment a child dies
      │     └─ dead child: log pid/exit code/signal, RECLAIM its partition
      │        (epoch+1, in-flight → queue front), fork a replacement with a new id
      ├─ every tick (0.1 s):
      │     ├─ embedded redis-server dead? restart it on the same data and socket
      │     ├─ leases: any active worker (ours or another host's) whose lease lapsed
      │     │  is reclaimed; if it is ours, a replacement starts and the old process
      │     │  is left to find itself fenced (killed after zombie_grace_s)
      │     ├─ time limits: a worker past its task's deadline is SIGKILLed; that task
      │     │  is retried or dead-lettered as `timeout`, the rest requeued
      │     └─ due delayed tasks are promoted (claims do this too)
      ├─ every second: sweep partitions with in-flight work and no live owner
      └─ stop(): SIGTERM all (warm), wait up to the deadline, SIGKILL the rest,
         reclaim whatever they still held

Worker ids are ``host:parent-pid:n``, unique across hosts and never reused, so a
replacement never shares a partition with a zombie of its predecessor.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from typing import Callable, cast

import attrs
import multiprocess
from multiprocess.connection import wait

from .config import Settings
from .exceptions import PayloadError, WorkerDied
from .log import logger
from .models import TIMEOUT, Task
from .recovery import reclaim_worker, retire_finished_partitions, sweep_dead_partitions
from .retry import failure
from .server import EmbeddedServer
from .state import StateManager
from .worker import (
    EXIT_BACKEND_LOST,
    EXIT_FENCED,
    EXIT_OK,
    EXIT_PARENT_GONE,
    worker_main,
)

TICK_S = 0.1
SWEEP_INTERVAL_S = 1.0
RETIRE_INTERVAL_S = 10.0
# A worker that dies this soon after its start, unregistered, counts towards the crash-loop limit.
EARLY_DEATH_S = 2.0
# A worker that exits cleanly (0) waits this long for our own stop before it is replaced.
CLEAN_EXIT_GRACE_S = 1.0


def death_cause(exitcode: int | None) -> tuple[str, bool]:
    """Why a worker ended, and whether its in-flight tasks are charged a crash.

    Only a real crash (a signal, an unexpected exit) is charged: a worker that gave up
    on an unreachable server, or found itself fenced, crashed nothing, and charging its
    batch would dead-letter innocent tasks as poison after a few outages."""
    if exitcode == EXIT_BACKEND_LOST:
        return "server_lost", False
    if exitcode == EXIT_FENCED:
        return "fenced", False
    if exitcode == EXIT_PARENT_GONE:
        return "orphaned", False
    return "died", True


@attrs.define
class WorkerProcess:
    worker_id: str
    process: multiprocess.Process
    started_at: float
    retired_at: float | None = None  # declared dead while its process may still run
    reclaimed: bool = False


class Supervisor:
    """Keeps ``settings.workers`` worker processes alive over one Redis URL.

    Args:
        settings: worker count, timeouts, crash limits.
        url: the Redis URL every worker connects to (after its fork); None for a
            state kind that needs no server.
        state: the parent's own state manager, used for reclaiming partitions.
        server: the embedded server to restart if it dies (None: external).
        target: the worker entry point (tests may pass another).
    """

    def __init__(
        self,
        settings: Settings,
        url: str | None,
        state: StateManager,
        server: EmbeddedServer | None = None,
        target: Callable[..., None] = worker_main,
    ) -> None:
        self.settings = settings
        self.url = url
        self.state = state
        self.server = server
        self.target = target
        self.prefix = f"{socket.gethostname()}:{os.getpid()}"
        self.workers: dict[int, WorkerProcess] = {}  # keyed by sentinel
        self.deaths: list[WorkerDied] = []
        self.exit_codes: dict[str, int | None] = {}  # worker id -> exit code, once it ended
        self.failure: WorkerDied | None = None
        self.lease_expiries = 0
        self.timeouts = 0
        self._next_index = 0
        self._started_ids: list[str] = []
        self._early_deaths = 0
        self._lease_checks_from = 0.0
        # dead workers whose takeover failed (server down): worker id -> (reason, crashed)
        self._unreclaimed: dict[str, tuple[str, bool]] = {}
        self._closing = threading.Event()
        self._lock = threading.Lock()  # guards self.workers between the thread and callers
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._thread: threading.Thread | None = None

    # -- public ----------------------------------------------------------------------------
    def start(self) -> None:
        """Fork the workers and start watching them."""
        self.prefix = self._unused_prefix(self.prefix)
        with self._lock:
            for _ in range(self.settings.workers):
                self._spawn()
        self._thread = threading.Thread(target=self._watch, name="orchestrator-supervisor", daemon=True)
        self._thread.start()

    def _unused_prefix(self, base: str) -> str:
        """``host:pid``, unless live workers already use it: two containers with the
        same host name and pid (PID 1) would otherwise share partitions. Then a nonce
        goes after the pid, and the worker ids stay (host, pid, index)."""
        try:
            taken = any(worker_id.startswith(base + ":") for worker_id in self.state.active_workers())
        except Exception:  # the first tick reports an unreachable server
            return base
        if not taken:
            return base
        alias = f"{base}.{uuid.uuid4().hex[:6]}"
        logger.warning("worker ids {}:N are in use (the same host name and pid elsewhere?); using {}:N", base, alias)
        return alias

    def started_ids(self) -> list[str]:
        """Every worker id this supervisor started, replacements included, in order."""
        with self._lock:
            return list(self._started_ids)

    def live_ids(self) -> list[str]:
        """Ids of the workers currently owning their partitions (not retired)."""
        with self._lock:
            return [w.worker_id for w in self.workers.values() if w.retired_at is None]

    def pids(self) -> dict[str, int]:
        """``{worker id: pid}`` of the live (not retired) workers."""
        with self._lock:
            return {w.worker_id: w.process.pid for w in self.workers.values() if w.retired_at is None}

    def signal_workers(self, signum: int) -> None:
        with self._lock:
            for worker in self.workers.values():
                if worker.process.is_alive():
                    try:
                        os.kill(worker.process.pid, signum)
                    except ProcessLookupError:
                        pass

    def stop(self, timeout: float | None = None, force: Callable[[], bool] = lambda: False) -> None:
        """Warm stop: SIGTERM, wait up to ``timeout`` (or until ``force()`` turns
        true, e.g. a second Ctrl-C), then SIGKILL what is left and reclaim it."""
        timeout = self.settings.shutdown_timeout_s if timeout is None else timeout
        self._closing.set()
        os.write(self._wakeup_w, b"x")
        if self._thread is not None:
            self._thread.join()
        self.signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        with self._lock:
            workers = list(self.workers.values())
        while any(w.process.is_alive() for w in workers) and time.monotonic() < deadline and not force():
            wait([w.process.sentinel for w in workers if w.process.is_alive()], timeout=0.05)
        for worker in workers:
            if worker.process.is_alive():
                logger.warning("worker {} (pid {}) did not stop in time; killing it", worker.worker_id, worker.process.pid)
                worker.process.kill()
                worker.process.join()
            self.exit_codes[worker.worker_id] = worker.process.exitcode
            if worker.process.exitcode != EXIT_OK and not worker.reclaimed:
                # Stopped by us, not crashed: requeue without counting a crash.
                reclaim_worker(self.state, worker.worker_id, self.settings, reason="stopped", crashed=False)
        try:
            # Every process has ended: a task a fenced worker's blocking claim landed in
            # its dead partition goes back now, not at the next start.
            sweep_dead_partitions(self.state, self.settings, [])
        except Exception as exc:
            logger.warning("final sweep of dead partitions failed: {!r} (the next start recovers them)", exc)
        with self._lock:
            self.workers.clear()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    # -- the watching thread ------------------------------------------------------------------
    def _spawn(self) -> WorkerProcess:
        worker_id = f"{self.prefix}:{self._next_index}"
        self._next_index += 1
        process = multiprocess.Process(
            target=self.target,
            args=(self.settings, self.url, worker_id, os.getpid()),
            name=f"orchestrator-worker-{worker_id}",
            daemon=False,
        )
        process.start()
        worker = WorkerProcess(worker_id=worker_id, process=process, started_at=time.monotonic())
        self.workers[process.sentinel] = worker
        self._started_ids.append(worker_id)
        logger.debug("started worker {} (pid {})", worker_id, process.pid)
        return worker

    def _watch(self) -> None:
        next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        next_retire = time.monotonic() + RETIRE_INTERVAL_S
        failing_since: float | None = None
        while not self._closing.is_set():
            with self._lock:
                sentinels = list(self.workers)
            ready = wait([*sentinels, self._wakeup_r], timeout=TICK_S)
            if self._closing.is_set():
                return
            for sentinel in ready:
                if sentinel != self._wakeup_r:
                    self._on_death(sentinel)
            try:
                self._tick()
                if time.monotonic() >= next_sweep:
                    sweep_dead_partitions(self.state, self.settings, self.live_ids())
                    next_sweep = time.monotonic() + SWEEP_INTERVAL_S
                if time.monotonic() >= next_retire:
                    retire_finished_partitions(self.state, self.settings)
                    next_retire = time.monotonic() + RETIRE_INTERVAL_S
            except Exception as exc:  # keep watching: the next tick tries again
                if failing_since is None:
                    failing_since = time.monotonic()
                    logger.warning("supervisor tick failed: {!r} (retrying every tick; said once)", exc)
                continue
            if failing_since is not None:
                logger.warning("supervisor ticks work again after {:.1f} s", time.monotonic() - failing_since)
                failing_since = None

    def _tick(self) -> None:
        if self.server is not None and not self.server.is_alive():
            self._restart_server(self.server)
        for worker_id, (reason, crashed) in sorted(self._unreclaimed.items()):
            reclaim_worker(self.state, worker_id, self.settings, reason=reason, crashed=crashed)
            del self._unreclaimed[worker_id]
        if time.monotonic() >= self._lease_checks_from:
            self._check_leases()
        self._check_time_limits()
        self._kill_lingering_zombies()
        self.state.promote_due()

    def _restart_server(self, server: EmbeddedServer) -> None:
        code = server.process.returncode if server.process else None
        logger.error("embedded redis-server died (exit code {}); restarting it on the same data", code)
        server.restart()
        # Leases could not be renewed while the server was down: give every worker
        # a full lease to renew before judging them.
        self._lease_checks_from = time.monotonic() + self.settings.lease_s + 1.0
        logger.warning("redis-server restarted (pid {}, restart #{})", server.pid, server.restarts)

    def _check_leases(self) -> None:
        for worker_id in self.state.expired_workers():
            result = reclaim_worker(self.state, worker_id, self.settings, reason="lease_expired", only_if_expired=True)
            if result is None:
                continue  # renewed in the meantime
            self.lease_expiries += 1
            with self._lock:
                ours = next((w for w in self.workers.values() if w.worker_id == worker_id), None)
                if ours is not None and ours.retired_at is None:
                    ours.retired_at = time.monotonic()
                    ours.reclaimed = True
                    logger.warning("worker {} (pid {}) lost its lease; starting a replacement", worker_id, ours.process.pid)
                    if not self._closing.is_set():
                        self._spawn()

    def _check_time_limits(self) -> None:
        with self._lock:
            live = [w for w in self.workers.values() if w.retired_at is None]
        if not live:
            return
        states = self.state.batch_get_worker_states([w.worker_id for w in live])
        if not any(fields.get("deadline") for fields in states.values()):
            return
        now = self.state.clock()  # deadlines are on the state's clock, not ours
        for worker in live:
            fields = states.get(worker.worker_id, {})
            deadline = fields.get("deadline")
            if deadline and now > float(deadline) and worker.process.is_alive():
                self._enforce_time_limit(worker, fields.get("current_task", ""))

    def _enforce_time_limit(self, worker: WorkerProcess, task_id: str) -> None:
        """Settle a task stuck past its deadline as a timeout, then kill its worker.

        The takeover comes first and is conditional: it happens only if the deadline
        still stands when it lands (a settle that landed first cleared it, and the task
        is counted done, never also a timeout). Once taken over the worker is fenced,
        so nothing it writes afterwards lands; then it is killed."""
        cause = None
        for raw in self.state.inflight(worker.worker_id):
            try:
                task = Task.from_json(raw)
            except PayloadError:
                continue
            if task.id == task_id:
                message = f"ran past its time limit; worker {worker.worker_id} (pid {worker.process.pid}) was killed"
                cause = failure(raw, task, TIMEOUT, message, self.settings, error_type="TimeLimitExceeded")
                break
        taken = reclaim_worker(
            self.state, worker.worker_id, self.settings, reason="timeout", crashed=False, cause=cause,
            deadline_of=task_id,
        )
        if taken is None:
            return  # it finished in time after all: its settle landed first
        self.timeouts += 1
        worker.reclaimed = True  # the sentinel path starts the replacement
        worker.process.kill()
        worker.process.join()
        logger.warning("task {} exceeded its time limit on {}; killed pid {}", task_id, worker.worker_id, worker.process.pid)

    def _kill_lingering_zombies(self) -> None:
        now = time.monotonic()
        with self._lock:
            zombies = [w for w in self.workers.values() if w.retired_at is not None and w.process.is_alive()]
        for worker in zombies:
            if now - cast(float, worker.retired_at) > self.settings.zombie_grace_s:  # not None: filtered above
                logger.warning("retired worker {} (pid {}) still running; killing it", worker.worker_id, worker.process.pid)
                worker.process.kill()

    def _died_before_registering(self, worker: WorkerProcess) -> bool:
        """A crash loop is workers dying before they ever register (bad import, no
        server), not registered workers being killed, however often."""
        if time.monotonic() - worker.started_at > EARLY_DEATH_S:
            return False
        try:
            return not self.state.get_worker_state(worker.worker_id)
        except Exception:
            return False

    def _on_death(self, sentinel: int) -> None:
        with self._lock:
            worker = self.workers.pop(sentinel, None)
        if worker is None:
            return
        worker.process.join()
        self.exit_codes[worker.worker_id] = worker.process.exitcode
        death = WorkerDied(worker.worker_id, worker.process.pid, worker.process.exitcode)
        if worker.retired_at is not None:
            logger.info("retired {} exited ({})", worker.worker_id, death)
            return  # already reclaimed and replaced
        if worker.process.exitcode == 0 and self._closing.wait(CLEAN_EXIT_GRACE_S):
            # A clean stop (it deregistered): a signal to the whole process group (a
            # terminal's Ctrl-C, systemd's stop) reached it a moment before our stop.
            logger.info("{} stopped with the rest", worker.worker_id)
            return
        self.deaths.append(death)
        logger.warning("{}; reclaiming its partition and starting a replacement", death)
        if not worker.reclaimed:
            reason, crashed = death_cause(worker.process.exitcode)
            try:
                reclaim_worker(self.state, worker.worker_id, self.settings, reason=reason, crashed=crashed)
            except Exception as exc:
                self._unreclaimed[worker.worker_id] = (reason, crashed)
                logger.error("could not reclaim {}: {!r} (retried every tick)", worker.worker_id, exc)
        if self._died_before_registering(worker):
            self._early_deaths += 1
        else:
            self._early_deaths = 0
        if self._early_deaths > 3 * self.settings.workers:
            self.failure = death
            logger.error("workers keep dying at start-up; not starting more (last: {})", death)
            return
        if not self._closing.is_set():
            with self._lock:
                self._spawn()
