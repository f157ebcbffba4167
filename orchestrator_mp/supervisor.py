"""The parent's side of the workers: fork, watch, reclaim, replace, stop.

::

    Supervisor (thread in the parent)
      ├─ fork ──▶ worker_main(w0) ─┐
      ├─ fork ──▶ worker_main(w1) ─┤  each: own Redis client, own partition
      │                            │
      ├─ wait(sentinels, wakeup) ◀─┘  a sentinel becomes ready when a child dies
      │     └─ dead child: log pid/exit code/signal, RECLAIM its partition
      │        (epoch+1, in-flight → queue), fork a replacement with a new id
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
from typing import Callable

import attrs
import multiprocess
from multiprocess.connection import wait

from .config import Settings
from .exceptions import WorkerDied
from .log import logger
from .recovery import reclaim_worker, sweep_dead_partitions
from .state import StateManager
from .worker import EXIT_OK, worker_main

SWEEP_INTERVAL_S = 1.0
# A worker that dies this soon after its start counts towards the crash-loop limit.
EARLY_DEATH_S = 2.0


@attrs.define
class WorkerProcess:
    worker_id: str
    process: multiprocess.Process
    started_at: float


class Supervisor:
    """Keeps ``settings.workers`` worker processes alive over one Redis URL.

    Args:
        settings: worker count, timeouts, crash limits.
        url: the Redis URL every worker connects to (after its fork); None for a
            state kind that needs no server.
        state: the parent's own state manager, used for reclaiming partitions.
        target: the worker entry point (tests may pass another).
    """

    def __init__(
        self,
        settings: Settings,
        url: str | None,
        state: StateManager,
        target: Callable[..., None] = worker_main,
    ) -> None:
        self.settings = settings
        self.url = url
        self.state = state
        self.target = target
        self.prefix = f"{socket.gethostname()}:{os.getpid()}"
        self.workers: dict[int, WorkerProcess] = {}  # keyed by sentinel
        self.deaths: list[WorkerDied] = []
        self.failure: WorkerDied | None = None
        self._next_index = 0
        self._started_ids: list[str] = []
        self._early_deaths = 0
        self._closing = threading.Event()
        self._lock = threading.Lock()  # guards self.workers between the thread and stop()
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._thread: threading.Thread | None = None

    # -- public ----------------------------------------------------------------------------
    def start(self) -> None:
        """Fork the workers and start watching them."""
        with self._lock:
            for _ in range(self.settings.workers):
                self._spawn()
        self._thread = threading.Thread(target=self._watch, name="orchestrator-supervisor", daemon=True)
        self._thread.start()

    def started_ids(self) -> list[str]:
        """Every worker id this supervisor started, replacements included, in order."""
        with self._lock:
            return list(self._started_ids)

    def live_ids(self) -> list[str]:
        with self._lock:
            return [w.worker_id for w in self.workers.values()]

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {w.worker_id: w.process.pid for w in self.workers.values()}

    def signal_workers(self, signum: int) -> None:
        with self._lock:
            for worker in self.workers.values():
                if worker.process.is_alive():
                    try:
                        os.kill(worker.process.pid, signum)
                    except ProcessLookupError:
                        pass

    def stop(self, timeout: float | None = None) -> None:
        """Warm stop: SIGTERM, wait up to ``timeout``, then SIGKILL and reclaim."""
        timeout = self.settings.shutdown_timeout_s if timeout is None else timeout
        self._closing.set()
        os.write(self._wakeup_w, b"x")
        if self._thread is not None:
            self._thread.join()
        self.signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            if worker.process.is_alive():
                logger.warning("worker {} (pid {}) ignored the stop; killing it", worker.worker_id, worker.process.pid)
                worker.process.kill()
                worker.process.join()
            if worker.process.exitcode != EXIT_OK:
                reclaim_worker(self.state, worker.worker_id, self.settings, reason="stopped")
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
        while not self._closing.is_set():
            with self._lock:
                sentinels = list(self.workers)
            ready = wait([*sentinels, self._wakeup_r], timeout=max(0.0, next_sweep - time.monotonic()))
            if self._closing.is_set():
                return
            for sentinel in ready:
                if sentinel != self._wakeup_r:
                    self._on_death(sentinel)
            if time.monotonic() >= next_sweep:
                try:
                    sweep_dead_partitions(self.state, self.settings, self.live_ids())
                except Exception as exc:  # keep watching: a failed sweep is retried next second
                    logger.warning("sweep of dead partitions failed: {!r}", exc)
                next_sweep = time.monotonic() + SWEEP_INTERVAL_S

    def _on_death(self, sentinel: int) -> None:
        with self._lock:
            worker = self.workers.pop(sentinel, None)
        if worker is None:
            return
        worker.process.join()
        death = WorkerDied(worker.worker_id, worker.process.pid, worker.process.exitcode)
        self.deaths.append(death)
        logger.warning("{}; reclaiming its partition and starting a replacement", death)
        try:
            reclaim_worker(self.state, worker.worker_id, self.settings, reason="died")
        except Exception as exc:
            logger.error("could not reclaim {}: {!r} (the next sweep retries)", worker.worker_id, exc)
        if time.monotonic() - worker.started_at < EARLY_DEATH_S:
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
