"""One worker process: claim a batch from the queue, run it, settle it, repeat.

The worker owns exactly one partition (``worker:{id}:*``) and writes nothing
else except through the shared atomic steps (counters, streams, queue moves).
It is forked by the supervisor and creates its own Redis client after the fork.

Signals (handlers only set flags; the loop acts on them):
    SIGINT   ignored: a terminal's Ctrl-C is the parent's to handle.
    SIGTERM  warm stop: finish the running task, hand unstarted claims back,
             settle, deregister. The kernel also sends SIGTERM when the parent
             dies (PR_SET_PDEATHSIG), so no worker outlives its parent.
"""
from __future__ import annotations

import os
import signal
import socket
import time
import traceback
from typing import Callable

from .config import Settings
from .exceptions import Fenced, PayloadError, UnknownTaskError
from .log import bind_worker, logger
from .models import BAD_PAYLOAD, TASK_ERROR, UNKNOWN_TASK, Outcome, Task
from .registry import get_task
from .server import die_with_parent
from .state import StateManager, create_state_manager

EXIT_OK = 0
EXIT_FENCED = 3
EXIT_PARENT_GONE = 4

# Settle at least this often while a batch of slow tasks runs, so progress and
# accounting never lag far behind the work.
SETTLE_INTERVAL_S = 0.1


def execute(raw: str, worker_id: str) -> Outcome:
    """Run one raw queue entry and describe how it ended; never raises for task errors."""
    started = time.time()
    try:
        task = Task.from_json(raw)
    except PayloadError as exc:
        return Outcome(raw=raw, task_id="", name="", ok=False, category=BAD_PAYLOAD, message=exc.error)
    wait_ms = max(0.0, (started - task.submitted_at) * 1000.0)
    try:
        func = get_task(task.name)
    except UnknownTaskError as exc:
        return Outcome(
            raw=raw, task_id=task.id, name=task.name, ok=False, category=UNKNOWN_TASK, message=str(exc), wait_ms=wait_ms
        )
    try:
        func(*task.args, **task.kwargs)
    except Exception as exc:  # the task's own error: record it, keep the worker alive
        run_ms = (time.time() - started) * 1000.0
        logger.debug("task {} ({}) failed: {!r}", task.id, task.name, exc)
        return Outcome(
            raw=raw,
            task_id=task.id,
            name=task.name,
            ok=False,
            category=TASK_ERROR,
            message=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            wait_ms=wait_ms,
            run_ms=run_ms,
        )
    run_ms = (time.time() - started) * 1000.0
    return Outcome(raw=raw, task_id=task.id, name=task.name, ok=True, wait_ms=wait_ms, run_ms=run_ms)


class Worker:
    """The claim-run-settle loop over one partition.

    Args:
        state: a state manager created in this process.
        worker_id: the partition this worker owns.
        settings: batch size, block timeout, and the number of workers to share with.
        should_stop: polled between tasks; True ends the loop after a warm stop.
    """

    def __init__(
        self,
        state: StateManager,
        worker_id: str,
        settings: Settings,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.state = state
        self.worker_id = worker_id
        self.settings = settings
        self.should_stop = should_stop
        self.epoch: int | None = None
        self.completed = 0
        self.failed = 0

    def register(self) -> int:
        self.epoch = self.state.register_worker(self.worker_id, pid=os.getpid(), host=socket.gethostname())
        return self.epoch

    def deregister(self) -> None:
        if self.epoch is not None:
            self.state.deregister_worker(self.worker_id, self.epoch)

    def run_batch(self, block: bool = True) -> int:
        """Claim one batch (blocking briefly on an empty queue), run and settle it.

        Returns the number of tasks claimed (0: the queue was empty). Raises Fenced.
        """
        if block:
            claimed = self.state.wait_claim(
                self.worker_id,
                self.epoch,
                self.settings.batch_size,
                self.settings.workers,
                self.settings.block_timeout_s,
            )
        else:
            claimed = self.state.claim(self.worker_id, self.epoch, self.settings.batch_size, self.settings.workers)
        outcomes: list[Outcome] = []
        last_settle = time.monotonic()
        for index, raw in enumerate(claimed):
            if self.should_stop():
                released = self.state.release(self.worker_id, self.epoch, claimed[index:])
                logger.info("warm stop: handed {} unstarted task(s) back to the queue", released)
                break
            outcomes.append(execute(raw, self.worker_id))
            if time.monotonic() - last_settle >= SETTLE_INTERVAL_S:
                self._settle(outcomes)
                outcomes = []
                last_settle = time.monotonic()
        self._settle(outcomes)
        return len(claimed)

    def _settle(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        result = self.state.settle(self.worker_id, self.epoch, outcomes)
        self.completed += result.completed
        self.failed += result.failed

    def run(self) -> int:
        """Serve until asked to stop; returns the process exit code."""
        self.register()
        logger.debug("worker started (epoch {})", self.epoch)
        try:
            while not self.should_stop():
                self.run_batch(block=True)
        except Fenced:
            logger.error("fenced: this worker's partition was taken over; exiting without writing")
            return EXIT_FENCED
        self.deregister()
        logger.debug("worker stopped: {} completed, {} failed", self.completed, self.failed)
        return EXIT_OK


class _StopFlags:
    """Set by signal handlers, read by the loop (handlers do nothing else)."""

    def __init__(self, parent_pid: int) -> None:
        self.parent_pid = parent_pid
        self.stop = False

    def on_sigterm(self, _signum: int, _frame: object) -> None:
        self.stop = True

    def should_stop(self) -> bool:
        return self.stop or os.getppid() != self.parent_pid


def worker_main(settings: Settings, url: str | None, worker_id: str, parent_pid: int) -> None:
    """Entry point of a forked worker process."""
    die_with_parent(signal.SIGTERM)
    flags = _StopFlags(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, flags.on_sigterm)
    bind_worker(worker_id)
    if os.getppid() != parent_pid:
        raise SystemExit(EXIT_PARENT_GONE)
    state = create_state_manager(settings, url)
    try:
        code = Worker(state, worker_id, settings, flags.should_stop).run()
    finally:
        state.close()
    raise SystemExit(code)
