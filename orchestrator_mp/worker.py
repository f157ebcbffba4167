"""One worker process: claim a batch from the queue, run it, settle it, repeat.

The worker owns exactly one partition (``worker:{id}:*``) and writes nothing
else except through the shared atomic steps (counters, streams, queue moves).
It is forked by the supervisor and creates its own Redis client after the fork.

Liveness: a heartbeat thread renews the partition's lease every
``heartbeat_interval_s``; a thread keeps beating while a long task runs in the
main thread, and stops only when the whole process stops (SIGSTOP, a hang in C
code holding the GIL, a dead host), which is exactly when the lease should lapse.

Lost connections: the worker's client does not resend commands by itself. On
BackendUnavailable the worker reconnects with backoff, repeats the idempotent
step it was making (settle, release), and before its next claim hands back to the
queue anything in its in-flight list it does not know about (a claim whose reply
was lost, or a settle the server lost in a crash): nothing stays stranded.

A full server (BackendFull: Redis at maxmemory refused a write, and wrote nothing of
that step) is waited out the same way, without a deadline: the step is sent again
with backoff until memory is freed. The lease stays ours meanwhile (a heartbeat only
refreshes existing keys, which Redis allows at maxmemory; see HEARTBEAT), so a
waiting worker is never taken over, and nothing is charged a crash.

Signals (handlers only set flags; the loop acts on them):
    SIGINT   ignored: a terminal's Ctrl-C is the parent's to handle.
    SIGTERM  warm stop: finish the running task, hand unstarted claims back,
             settle, deregister. The kernel also sends SIGTERM when the parent
             dies (PR_SET_PDEATHSIG), so no worker outlives its parent.
"""
from __future__ import annotations

import asyncio
import inspect
import math
import os
import signal
import socket
import threading
import time
import traceback
from typing import Any, Callable, TypeVar, cast

from .config import Settings
from .exceptions import (
    BackendFull,
    BackendUnavailable,
    Fenced,
    PayloadError,
    UnknownTaskError,
)
from .limits import bind
from .log import bind_worker, logger
from .models import (
    BAD_PAYLOAD,
    BAD_RESULT,
    TASK_ERROR,
    TIMEOUT,
    UNKNOWN_TASK,
    Outcome,
    Task,
)
from .proc import die_with_parent
from .registry import TaskSpec, get_spec, get_task
from .retry import failure, time_limit_for
from .state import StateManager, TaskLimits, create_state_manager
from .wire import dumps

EXIT_OK = 0
EXIT_FENCED = 3
EXIT_PARENT_GONE = 4
EXIT_BACKEND_LOST = 5

# Settle at least this often while a batch of slow tasks runs, so progress and
# accounting never lag far behind the work.
SETTLE_INTERVAL_S = 0.1
# Claims are sized so one batch takes about this long: fast tasks come in big batches
# (few round trips), slow ones one or a few at a time (no worker sits on a backlog
# while others idle).
TARGET_BATCH_S = 0.05
FIRST_CLAIM = 16
# How long a worker keeps trying to reach a vanished server before giving up.
RECONNECT_TIMEOUT_S = 60.0
# Backoff while a full server (maxmemory) refuses a step: from the first to the last.
FULL_BACKOFF_S = (0.05, 0.5)

T = TypeVar("T")

_PLAIN_RESULTS = frozenset({type(None), bool, int, float, str})


class Heartbeat:
    """Renews the worker's lease from a daemon thread until stopped or fenced."""

    def __init__(self, state: StateManager, worker_id: str, epoch: int, interval_s: float) -> None:
        self.state = state
        self.worker_id = worker_id
        self.epoch = epoch
        self.interval_s = interval_s
        self.fenced = False
        self.last_success = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{worker_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.state.heartbeat(self.worker_id, self.epoch)
                self.last_success = time.monotonic()
            except Fenced:
                logger.error("heartbeat refused: partition taken over (lease lapsed); stopping")
                self.fenced = True
                return
            except (BackendUnavailable, BackendFull):
                continue  # the main loop reconnects or waits; keep beating meanwhile
            except Exception as exc:  # never let the thread die silently
                logger.warning("heartbeat failed: {!r}", exc)


class Worker:
    """The claim-run-settle loop over one partition.

    Args:
        state: a state manager created in this process.
        worker_id: the partition this worker owns.
        settings: batch size, block timeout, retry policy, lease timing.
        should_stop: polled between tasks; True ends the loop after a warm stop.
        heartbeat: run a lease-renewing thread (off for the in-process sequential mode).
    """

    def __init__(
        self,
        state: StateManager,
        worker_id: str,
        settings: Settings,
        should_stop: Callable[[], bool] = lambda: False,
        heartbeat: bool = True,
    ) -> None:
        self.state = state
        self.worker_id = worker_id
        self.settings = settings
        self._should_stop = should_stop
        self._use_heartbeat = heartbeat
        self._heartbeat: Heartbeat | None = None
        self.epoch: int | None = None
        self.completed = 0
        self.failed = 0
        self._needs_resync = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limits: TaskLimits | None = None
        self._coroutine_names: dict[str, bool] = {}  # registry is fixed once forked
        self._run_ms_average: float | None = None  # moving average of batch wall time per task
        self._coroutine_batch = False  # the last batch held coroutine tasks

    # -- lifecycle ---------------------------------------------------------------------------
    def register(self) -> int:
        """Open this worker's partition. A server that is unreachable right now (a
        restart, a failover) is waited for like any other outage, up to
        RECONNECT_TIMEOUT_S, and a full one (maxmemory) until it has room: a
        replacement started mid-outage must not die here."""
        delay, deadline = 0.02, time.monotonic() + RECONNECT_TIMEOUT_S
        full_since, attempt = 0.0, 0
        while True:
            try:
                self.epoch = self.state.register_worker(self.worker_id, pid=os.getpid(), host=socket.gethostname())
                break
            except BackendUnavailable:
                if self._should_stop() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(1.0, delay * 2)
            except BackendFull as exc:
                full_since = full_since or time.monotonic()
                self._wait_while_full(exc, attempt)
                attempt += 1
        if attempt:
            logger.warning("registered after waiting {:.1f} s for the full server", time.monotonic() - full_since)
        self._limits = self.state.limits(self.worker_id)
        if self._limits is not None:
            self._limits.fence(self.epoch)
        bind(self._limits)
        if self._use_heartbeat:
            self._heartbeat = Heartbeat(self.state, self.worker_id, self.epoch, self.settings.heartbeat_interval_s)
            self._heartbeat.start()
        return self.epoch

    @property
    def _owned_epoch(self) -> int:
        """The epoch :meth:`register` took; every write after it runs with one."""
        return cast(int, self.epoch)

    def deregister(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self.epoch is not None:
            self._call(self.state.deregister_worker, self.worker_id, self.epoch)

    def should_stop(self) -> bool:
        return self._should_stop() or (self._heartbeat is not None and self._heartbeat.fenced)

    def run(self) -> int:
        """Serve until asked to stop; returns the process exit code."""
        try:
            self.register()
            logger.debug("worker started (epoch {})", self.epoch)
            while not self.should_stop():
                self.run_batch(block=True)
            if self._heartbeat is not None and self._heartbeat.fenced:
                raise Fenced(self.worker_id, self._owned_epoch)
            self.deregister()
        except Fenced:
            logger.error("fenced: this worker's partition was taken over; exiting without writing")
            return EXIT_FENCED
        except BackendUnavailable as exc:
            logger.error("giving up: {}", exc)
            return EXIT_BACKEND_LOST
        except BackendFull as exc:
            # Asked to stop while the server was full: leave what we hold to the parent,
            # which requeues it without a crash charge (nothing here crashed).
            logger.error("stopping while the server is full: {}", exc)
            return EXIT_BACKEND_LOST
        finally:
            if self._heartbeat is not None:
                self._heartbeat.stop()
            if self._loop is not None:
                self._loop.close()
        logger.debug("worker stopped: {} completed, {} failed", self.completed, self.failed)
        return EXIT_OK

    # -- one batch ----------------------------------------------------------------------------
    def run_batch(self, block: bool = True) -> int:
        """Claim one batch (blocking briefly on an empty queue), run and settle it.

        Returns the number of tasks claimed (0: the queue was empty). Raises Fenced.
        """
        claimed = self._call(self._claim, block)
        if not claimed:
            return 0
        began = time.monotonic()
        count = len(claimed)
        coroutines = [raw for raw in claimed if self._is_async(raw)]
        if coroutines:
            if self.should_stop():
                self._call(self.state.release, self.worker_id, self.epoch, claimed)
                return count
            self._settle(self._run_async_group(coroutines))
            concurrent = set(coroutines)
            claimed = [raw for raw in claimed if raw not in concurrent]
        outcomes: list[Outcome] = []
        last_settle = time.monotonic()
        for index, raw in enumerate(claimed):
            self._check_lease()
            if self.should_stop():
                released = self._call(self.state.release, self.worker_id, self.epoch, claimed[index:])
                logger.info("warm stop: handed {} unstarted task(s) back to the queue", released)
                break
            outcome, limited = self._execute(raw)
            if outcome is not None:
                outcomes.append(outcome)
            if limited or time.monotonic() - last_settle >= SETTLE_INTERVAL_S:
                # A time-limited task is settled at once: that clears its deadline
                # before the next task runs under the same partition.
                self._settle(outcomes)
                outcomes = []
                last_settle = time.monotonic()
        self._settle(outcomes)
        self._coroutine_batch = bool(coroutines)
        if not coroutines:
            self._learn(time.monotonic() - began, count)
        return count

    def _check_lease(self) -> None:
        """Before each task: if no heartbeat landed for a whole lease (this process was
        paused, or starved), confirm the partition is still ours before running more,
        so a resumed zombie does not run tasks that now belong to another worker."""
        beat = self._heartbeat
        if beat is None or time.monotonic() - beat.last_success < self.settings.lease_s:
            return
        self._call(self.state.heartbeat, self.worker_id, self.epoch)  # raises Fenced if taken over
        beat.last_success = time.monotonic()

    def _claim(self, block: bool) -> list[str]:
        if self._needs_resync:
            # Nothing is outstanding between batches, so whatever sits in our
            # in-flight list now is unknown to us: hand it back to the queue.
            stranded = self.state.inflight(self.worker_id)
            if stranded:
                released = self.state.release(self.worker_id, self._owned_epoch, stranded)
                logger.warning("resync after reconnect: {} stranded task(s) handed back", released)
            self._needs_resync = False
        divisor, size, epoch = self.settings.workers, self.claim_size(), self._owned_epoch
        if block:
            return self.state.wait_claim(self.worker_id, epoch, size, divisor, self.settings.block_timeout_s)
        return self.state.claim(self.worker_id, epoch, size, divisor)

    def claim_size(self) -> int:
        """How many tasks to claim next: about TARGET_BATCH_S of work, at most batch_size."""
        if self._coroutine_batch:
            # Coroutines overlap: claim as many as may run at once.
            return min(self.settings.batch_size, max(FIRST_CLAIM, self.settings.async_concurrency))
        if self._run_ms_average is None:
            return min(self.settings.batch_size, FIRST_CLAIM)  # slow start: nothing learned yet
        fitting = int(TARGET_BATCH_S * 1000.0 / max(self._run_ms_average, 0.001))
        return max(1, min(self.settings.batch_size, fitting))

    def _learn(self, seconds: float, count: int) -> None:
        """Track the wall time per task of whole batches (coroutines overlap, so their
        per-task share is what counts, not their individual run time)."""
        average = seconds * 1000.0 / count
        previous = self._run_ms_average
        self._run_ms_average = average if previous is None else 0.5 * previous + 0.5 * average

    def _settle(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        result = self._call(self.state.settle, self.worker_id, self.epoch, outcomes)
        self.completed += result.completed
        self.failed += result.failed

    def _prepare(self, raw: str) -> Outcome | tuple[Task, TaskSpec, float, float] | None:
        """Decode a queue entry and find its task; an Outcome if it cannot run, None if
        a rate limit or concurrency cap put it off (it has left our in-flight list)."""
        started = time.time()
        try:
            task = Task.from_json(raw)
        except PayloadError as exc:
            return failure(raw, None, BAD_PAYLOAD, exc.error, self.settings, error_type="PayloadError")
        wait_ms = max(0.0, (started - task.submitted_at) * 1000.0)
        try:
            spec = get_spec(task.name)
        except UnknownTaskError as exc:
            return failure(
                raw, task, UNKNOWN_TASK, str(exc), self.settings, error_type="UnknownTaskError", wait_ms=wait_ms
            )
        if spec.limited:
            if self._limits is None:
                message = (
                    f"rate limits and concurrency caps need the lockfree state; this run uses {self.state.kind}"
                )
                return failure(raw, task, TASK_ERROR, message, self.settings, error_type="ConfigurationError")
            admission = self._call(
                self._limits.admit, self.worker_id, self.epoch, raw, task.id, spec.rate_limit, spec.concurrency
            )
            if not admission.run:
                return None
        return task, spec, started, wait_ms

    def _release_slot(self, task: Task, spec: TaskSpec) -> None:
        if spec.concurrency is not None and self._limits is not None:
            self._call(self._limits.release, spec.concurrency, self.worker_id, task.id)

    def _execute(self, raw: str) -> tuple[Outcome | None, bool]:
        """Run one raw queue entry; returns its outcome (None: put off by a limit) and
        whether it had a time limit."""
        prepared = self._prepare(raw)
        if prepared is None or isinstance(prepared, Outcome):
            return prepared, False
        task, spec, started, wait_ms = prepared
        limit = time_limit_for(task, self.settings)
        if limit is not None:
            # Published (on the server's clock) so the parent, which a stuck task cannot
            # block, can enforce it.
            self._call(self.state.start_task, self.worker_id, self.epoch, task.id, limit)
        try:
            result = spec.func(*task.args, **task.kwargs)
        except Exception as exc:  # the task's own error: record it, keep the worker alive
            return self._raised(raw, task, exc, started, wait_ms), limit is not None
        finally:
            self._release_slot(task, spec)
        return self._finished(raw, task, result, started, wait_ms), limit is not None

    def _raised(self, raw: str, task: Task, exc: BaseException, started: float, wait_ms: float) -> Outcome:
        run_ms = (time.time() - started) * 1000.0
        return failure(
            raw, task, TASK_ERROR, f"{type(exc).__name__}: {exc}", self.settings,
            traceback="".join(traceback.format_exception(exc)), error_type=type(exc).__name__,
            wait_ms=wait_ms, run_ms=run_ms,
        )

    # -- coroutine tasks -----------------------------------------------------------------------
    def _is_async(self, raw: str) -> bool:
        name_start = raw.find('"name":"')
        if name_start < 0:
            return False
        name = raw[name_start + 8 : raw.find('"', name_start + 8)]
        known = self._coroutine_names.get(name)
        if known is None:
            try:
                known = inspect.iscoroutinefunction(get_task(name))
            except UnknownTaskError:
                known = False
            self._coroutine_names[name] = known
        return known

    def _run_async_group(self, raws: list[str]) -> list[Outcome]:
        """Run coroutine tasks concurrently on this worker's event loop (at most
        ``async_concurrency`` at once); time limits apply per task without a kill."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        limit = asyncio.Semaphore(self.settings.async_concurrency)

        async def run_one(raw: str) -> Outcome | None:
            prepared = self._prepare(raw)
            if prepared is None or isinstance(prepared, Outcome):
                return prepared
            task, spec, started, wait_ms = prepared
            seconds = time_limit_for(task, self.settings)
            async with limit:
                try:
                    result = await asyncio.wait_for(spec.func(*task.args, **task.kwargs), seconds)
                except asyncio.TimeoutError:
                    message = f"coroutine ran past its time limit of {seconds} s and was cancelled"
                    return failure(raw, task, TIMEOUT, message, self.settings, error_type="TimeLimitExceeded")
                except Exception as exc:
                    return self._raised(raw, task, exc, started, wait_ms)
                finally:
                    self._release_slot(task, spec)
            return self._finished(raw, task, result, started, wait_ms)

        async def run_all() -> list[Outcome]:
            outcomes = await asyncio.gather(*(run_one(raw) for raw in raws))
            return [outcome for outcome in outcomes if outcome is not None]

        return self._loop.run_until_complete(run_all())

    def _finished(self, raw: str, task: Task, result: Any, started: float, wait_ms: float) -> Outcome:
        """The outcome of a run that returned: done, or bad_result if it cannot be stored."""
        run_ms = (time.time() - started) * 1000.0
        try:
            # Every result must be JSON (so results behave the same whether stored or
            # not); the common scalars need no encoding to know it.
            if task.want_result or type(result) not in _PLAIN_RESULTS:
                result_json = dumps(result)
            elif type(result) is float and not math.isfinite(result):
                raise ValueError(f"{result!r} is not JSON")
            else:
                result_json = ""
        except (TypeError, ValueError) as exc:
            message = f"result of type {type(result).__name__} is not JSON-serialisable: {exc}"
            return failure(raw, task, BAD_RESULT, message, self.settings, wait_ms=wait_ms, run_ms=run_ms)
        return Outcome(
            raw=raw,
            task_id=task.id,
            name=task.name,
            ok=True,
            wait_ms=wait_ms,
            run_ms=run_ms,
            result_json=result_json if task.want_result else "",
            want_result=task.want_result,
        )

    # -- lost connections -------------------------------------------------------------------
    def _call(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one state operation, reconnecting (and resyncing later) if the server went
        away, and sending it again once there is room if the server was full."""
        full_since, attempt = 0.0, 0
        while True:
            try:
                result = operation(*args, **kwargs)
            except BackendUnavailable as exc:
                logger.warning("lost the server ({}); reconnecting", exc)
                self._reconnect()
                continue
            except BackendFull as exc:
                full_since = full_since or time.monotonic()
                self._wait_while_full(exc, attempt)
                attempt += 1
                continue
            if attempt:
                logger.warning("the server has room again; resumed after {:.1f} s", time.monotonic() - full_since)
            return result

    def _wait_while_full(self, exc: BackendFull, attempt: int) -> None:
        """Backoff step ``attempt`` while a full server refuses a write (nothing of it
        landed). No deadline: the server is up, and a worker leaving would only be
        replaced into the same wait. A step spanning shards may have landed in some of
        them, so the next claim first hands back anything in flight we do not know about.

        Raises: ``exc`` when this worker is asked to stop meanwhile."""
        if self._should_stop():
            raise exc
        if attempt == 0:
            logger.warning("{}; waiting", exc)
        self._needs_resync = True
        first, last = FULL_BACKOFF_S
        time.sleep(min(last, first * 2 ** min(attempt, 10)))

    def _reconnect(self) -> None:
        delay, deadline = 0.02, time.monotonic() + RECONNECT_TIMEOUT_S
        while True:
            if self._should_stop():
                # Stopping (or orphaned) with no server to report to: leave; the
                # parent, or the next start, reclaims whatever is still in flight.
                raise BackendUnavailable("the server is unreachable and this worker is stopping")
            try:
                self.state.heartbeat(self.worker_id, self._owned_epoch)
                break
            except BackendUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(1.0, delay * 2)
        self._needs_resync = True
        logger.info("reconnected")


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
    state = create_state_manager(settings, url, fail_fast=True)
    try:
        code = Worker(state, worker_id, settings, flags.should_stop).run()
    finally:
        state.close()
    raise SystemExit(code)
