"""OrchestratorExecutor: the ``concurrent.futures.Executor`` interface over registered tasks.

Code written for ``ProcessPoolExecutor`` switches with one line, provided its
functions are registered with ``@task``::

    with OrchestratorExecutor(max_workers=4) as executor:      # was ProcessPoolExecutor(4)
        results = list(executor.map(resize, paths, timeout=60))

What it gains: a worker killed mid-task loses nothing and breaks nothing (its tasks
are requeued and their futures still resolve), where the standard pool raises
``BrokenProcessPool``. Futures resolve from one listener thread that follows the
``work_completions`` and ``work_errors`` streams (XREAD BLOCK) and reads the stored
results, so a thousand futures cost one blocking connection, not a thousand.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Executor, Future
from typing import Any, Callable, Iterable, Iterator

from . import keys
from .config import Settings
from .exceptions import UnknownTaskError
from .handles import failure_from
from .log import logger
from .orchestrator import ContinuousOrchestrator
from .registry import MAP_CHUNK_TASK, map_chunk, name_of
from .state import StateManager, create_state_manager

SAFETY_SWEEP_S = 2.0  # also poll stored results, in case a stream entry was trimmed unseen


class RemoteFuture(Future[Any]):
    """A Future whose ``cancel()`` withdraws the task from the queue, and fails once a
    worker has claimed it (it is running: the standard semantics)."""

    def __init__(self, withdraw: Callable[[], bool]) -> None:
        super().__init__()
        self._withdraw = withdraw

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        if not self._withdraw():
            return False
        return super().cancel()


class OrchestratorExecutor(Executor):
    """Runs registered functions on orchestrator workers and returns real Futures.

    Args:
        max_workers: worker processes (default: one per CPU).
        db: database file; default: a private temporary one, removed at shutdown.
        settings: full settings (``db``/``max_workers`` override its fields).
        orchestrator: a running ContinuousOrchestrator to use instead of starting one
            (it is left running at shutdown).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        db: str | None = None,
        settings: Settings | None = None,
        orchestrator: ContinuousOrchestrator | None = None,
    ) -> None:
        self._temp_dir: str | None = None
        if orchestrator is None:
            if db is None and (settings is None or settings.redis_url is None):
                self._temp_dir = tempfile.mkdtemp(prefix="orchestrator_mp-executor-")
                db = os.path.join(self._temp_dir, "executor.db")
            orchestrator = ContinuousOrchestrator(max_workers, db=db, settings=settings)
            orchestrator.start()
            self._owns = True
        else:
            self._owns = False
        self._orch = orchestrator
        self._listener_state: StateManager = create_state_manager(orchestrator.settings, orchestrator.url)
        self._pending: dict[str, tuple[RemoteFuture, float]] = {}
        self._lock = threading.Lock()
        self._shutdown = False
        self._closing = threading.Event()
        self._positions = {
            keys.WORK_COMPLETIONS: self._listener_state.stream_tail(keys.WORK_COMPLETIONS).last_id,
            keys.WORK_ERRORS: self._listener_state.stream_tail(keys.WORK_ERRORS).last_id,
        }
        self._listener = threading.Thread(target=self._listen, name="executor-results", daemon=True)
        self._listener.start()

    # -- Executor interface --------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Queue ``fn(*args, **kwargs)``; ``fn`` must be registered (or a registered name)."""
        return self._submit_calls(fn, [(args, kwargs)])[0]

    def map(
        self, fn: Callable[..., Any] | str, *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        """Like ``Executor.map``: all calls are queued now (in batches), results come in order.

        ``timeout`` counts from this call; ``chunksize`` > 1 sends that many calls per
        queue entry (fewer round trips for tiny tasks; a failure fails its chunk).
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        end_time = None if timeout is None else time.monotonic() + timeout
        calls = [list(args) for args in zip(*iterables, strict=False)]
        if chunksize == 1:
            futures = self._submit_calls(fn, [(args, {}) for args in calls])
        else:
            target = fn if isinstance(fn, str) else _registered_name(fn)
            chunks = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
            futures = self._submit_calls(MAP_CHUNK_TASK, [((target, chunk), {}) for chunk in chunks])

        def results() -> Iterator[Any]:
            try:
                for future in futures:
                    remaining = None if end_time is None else end_time - time.monotonic()
                    value = future.result(remaining)
                    if chunksize == 1:
                        yield value
                    else:
                        yield from value
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; optionally withdraw queued tasks; wait; stop the workers."""
        with self._lock:
            self._shutdown = True
            pending = [future for future, _ in self._pending.values()]
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            for future in pending:
                if not future.cancelled():
                    try:
                        future.exception()
                    except Exception:  # cancelled or failed; nothing to wait for
                        pass
        self._closing.set()
        self._listener.join(timeout=5)
        self._listener_state.close()
        if self._owns:
            self._orch.close()
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    # -- internals -----------------------------------------------------------------------------
    def _submit_calls(self, fn: Callable[..., Any] | str, calls: list[tuple[Any, dict[str, Any]]]) -> list[RemoteFuture]:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        futures: list[RemoteFuture] = []
        for start in range(0, len(calls), 10_000):
            ids, raws = self._orch.submit_raw(fn, calls[start : start + 10_000], results=True)
            now = time.monotonic()
            with self._lock:
                for task_id, raw in zip(ids, raws, strict=True):
                    future = RemoteFuture(self._withdrawer(task_id, raw))
                    self._pending[task_id] = (future, now)
                    futures.append(future)
        return futures

    def _withdrawer(self, task_id: str, raw: str) -> Callable[[], bool]:
        def withdraw() -> bool:
            if not self._orch.cancel_queued(raw):
                return False
            with self._lock:
                self._pending.pop(task_id, None)
            return True

        return withdraw

    def _listen(self) -> None:
        next_sweep = time.monotonic() + SAFETY_SWEEP_S
        while not self._closing.is_set():
            try:
                finished = []
                for stream, _entry_id, fields in self._listener_state.follow(self._positions, block_s=0.2):
                    final = stream == keys.WORK_COMPLETIONS or fields.get("retry") == "0"
                    if final and fields.get("task_id") in self._pending:
                        finished.append(fields["task_id"])
                if time.monotonic() >= next_sweep:
                    finished.extend(self._overdue())
                    next_sweep = time.monotonic() + SAFETY_SWEEP_S
                if finished:
                    self._resolve(finished)
            except Exception as exc:  # keep resolving: the server may be restarting
                logger.warning("executor listener: {!r}", exc)
                time.sleep(0.2)

    def _overdue(self) -> list[str]:
        cutoff = time.monotonic() - SAFETY_SWEEP_S
        with self._lock:
            return [task_id for task_id, (_, since) in self._pending.items() if since < cutoff]

    def _resolve(self, task_ids: list[str]) -> None:
        unique = list(dict.fromkeys(task_ids))
        for start in range(0, len(unique), 1000):
            chunk = unique[start : start + 1000]
            stored = self._listener_state.get_results(chunk)
            for task_id in chunk:
                outcome = stored.get(task_id)
                if outcome is None:
                    continue
                with self._lock:
                    entry = self._pending.pop(task_id, None)
                if entry is None or entry[0].done():
                    continue
                future = entry[0]
                if outcome.get("status") == "done":
                    future.set_result(outcome.get("result"))
                else:
                    future.set_exception(failure_from(task_id, outcome))


def _registered_name(fn: Callable[..., Any]) -> str:
    name = name_of(fn)
    if name is None:
        raise UnknownTaskError(getattr(fn, "__qualname__", repr(fn)))
    return name


__all__ = ["OrchestratorExecutor", "RemoteFuture", "map_chunk"]
