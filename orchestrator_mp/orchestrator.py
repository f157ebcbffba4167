"""ContinuousOrchestrator: the library entry point (server + state + workers).

::

    with ContinuousOrchestrator(max_workers=4) as orch:   # starts redis-server, forks workers
        orch.submit("resize", "cat.png", width=200)       # JSON arguments, registered names
        orch.wait(timeout=60)                             # until queue and in-flight are empty
        print(orch.counters())

Without ``redis_url`` an embedded server is started on ``db`` (locked against a
second orchestrator); with it, that server is used as is. A state kind that needs
no server (``state="file"``) starts none but still locks ``db``; when the embedded
server cannot run at all, the orchestrator falls back to that kind with a warning.
``enable_parallel=False`` runs the same tasks in this process, one batch at a time,
through the same state manager, so accounting is identical.

The orchestrator leaves logging to the application: its lines (and its workers')
are dropped until the application calls ``logger.enable("orchestrator_mp")``, and
then go to the application's own sinks (see :mod:`.log`).
"""
from __future__ import annotations

import datetime
import os
import socket
import time
from typing import Any, Callable, Iterable, cast

from .config import Settings
from .connection import check_reachable
from .database import check_memory_policy, record_kind
from .dblock import DatabaseLock
from .exceptions import (
    ConfigurationError,
    ServerNotRunnable,
    SupervisorClosed,
)
from .handles import TaskHandle
from .log import logger
from .recovery import recover_stale_partitions
from .server import EmbeddedServer, monitor_command
from .state import (
    FALLBACK_KIND,
    StateManager,
    create_state_manager,
    state_dir_for,
    state_kind,
)
from .submission import Call, encode_calls, task_name
from .supervisor import Supervisor
from .worker import Worker

POLL_INTERVAL_S = 0.02


class ContinuousOrchestrator:
    """Runs registered tasks on worker processes that share only atomic Redis operations.

    Args:
        max_workers: worker processes (default: one per CPU).
        enable_parallel: False runs tasks in this process instead of forking workers.
        db: the embedded server's database file.
        redis_url: use this server instead of starting the embedded one.
        settings: a full :class:`Settings`; keyword overrides are applied on top.
        strict_names: refuse to submit names not registered in this process.
        **overrides: any other :class:`Settings` field.

    Raises (from :meth:`start`):
        ConfigurationError: invalid settings, or a server whose ``maxmemory-policy`` is
            not ``noeviction`` (unless ``allow_eviction``).
        BackendFull: a new database on a server that is already full.
        DatabaseInUse / ServerError: the embedded server cannot start on ``db``
            (a binary that cannot run at all falls back to the file-based state).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        enable_parallel: bool = True,
        *,
        db: str | None = None,
        redis_url: str | None = None,
        settings: Settings | None = None,
        strict_names: bool = True,
        **overrides: Any,
    ) -> None:
        settings = settings or Settings()
        if max_workers is not None:
            overrides["workers"] = max_workers
        if db is not None:
            overrides["db_path"] = db
        if redis_url is not None:
            overrides["redis_url"] = redis_url
        self.settings = settings.evolve(**overrides) if overrides else settings
        self.enable_parallel = enable_parallel
        self.strict_names = strict_names
        self.server: EmbeddedServer | None = None
        self.db_lock: DatabaseLock | None = None
        self.state: StateManager | None = None
        self.supervisor: Supervisor | None = None
        self._supervisor_state: StateManager | None = None
        self.url: str | None = None
        self._local_worker: Worker | None = None
        self._stopped_worker_ids: list[str] = []
        self._started = False
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "ContinuousOrchestrator":
        """Start the server (unless external), recover leftovers, fork the workers."""
        if self._started:
            return self
        try:
            self._start_backend()
            self.state = create_state_manager(self.settings, self.url)
            recover_stale_partitions(self.state, self.settings, exclusive=self.server is not None)
            if self.enable_parallel:
                # The supervisor's own manager fails fast: it must never sit in
                # client retries while the server it should restart is dead.
                self._supervisor_state = create_state_manager(self.settings, self.url, fail_fast=True)
                self.supervisor = Supervisor(self.settings, self.url, self._supervisor_state, server=self.server)
                self.supervisor.start()
            else:
                self._local_worker = Worker(self.state, f"{socket.gethostname()}:{os.getpid()}:local", self.settings)
                self._local_worker.register()
        except BaseException:
            self._teardown()
            raise
        self._started = True
        return self

    def _start_backend(self) -> None:
        """The server (or the database lock) the chosen state kind needs."""
        if state_kind(self.settings.state).needs_server:
            if self.settings.redis_url:
                self.url = self.settings.redis_url
                check_reachable(self.url)
            else:
                try:
                    self.server = EmbeddedServer(self.settings.db_path, durability=self.settings.durability).start()
                except ServerNotRunnable as exc:
                    logger.warning(
                        "the embedded redis-server cannot run ({}); falling back to the {} state in {}: "
                        "correct but much slower",
                        exc,
                        FALLBACK_KIND,
                        state_dir_for(self.settings.db_path),
                    )
                    self.settings = self.settings.evolve(state=FALLBACK_KIND)
                else:
                    self.url = self.server.url
        if state_kind(self.settings.state).needs_server:
            url = cast(str, self.url)  # set above whenever the (final) state kind needs a server
            check_memory_policy(url, self.settings.allow_eviction)
            record_kind(url, self.settings.state)
        else:
            self.db_lock = DatabaseLock(self.settings.db_path).acquire()
            self.db_lock.write_record(state=self.settings.state, files=state_dir_for(self.settings.db_path))

    def close(self, timeout: float | None = None) -> None:
        """Warm-stop the workers (SIGKILL after ``timeout``), save and stop the server."""
        if self._closed:
            return
        self._closed = True
        self._teardown(timeout)

    def stop_workers(self, timeout: float | None = None, force: Callable[[], bool] = lambda: False) -> None:
        """Warm-stop the workers but keep the server, so final figures can be read.

        Workers get ``timeout`` seconds (default ``shutdown_timeout_s``) to finish
        their running task, less if ``force()`` turns true; then they are killed and
        their tasks requeued.
        """
        if self.supervisor is not None:
            supervisor, self.supervisor = self.supervisor, None
            self._stopped_worker_ids = supervisor.started_ids()
            supervisor.stop(timeout, force)
        if self._local_worker is not None and self._local_worker.epoch is not None:
            self._local_worker.deregister()
            self._local_worker.epoch = None

    def _teardown(self, timeout: float | None = None) -> None:
        try:
            self.stop_workers(timeout)
        finally:
            for state in (self.state, self._supervisor_state):
                if state is not None:
                    state.close()
            if self.server is not None:
                self.server.stop()
            if self.db_lock is not None:
                self.db_lock.release()

    def __enter__(self) -> "ContinuousOrchestrator":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _require_running(self) -> StateManager:
        if not self._started or self._closed or self.state is None:
            raise SupervisorClosed("the orchestrator is not running: use it inside `with` or call start()")
        return self.state

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, task: str | Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskHandle:
        """Queue one task by registered name (or function); returns its handle.

        Raises:
            UnknownTaskError: the name is not registered here (with ``strict_names``).
            PayloadError: the arguments are not JSON-serialisable, or too large.
            BackendFull: Redis is at ``maxmemory``; nothing was queued (back-pressure:
                submit again once workers or an operator freed memory).
        """
        return self.submit_many(task, [(args, kwargs)])[0]

    def submit_many(
        self,
        task: str | Callable[..., Any],
        calls: Iterable[Call],
        *,
        results: bool = True,
    ) -> list[TaskHandle]:
        """Queue many calls of one task in one atomic step; returns their handles in order.

        Each call is ``(args, kwargs)`` or just a sequence of positional arguments.
        ``results=False`` skips storing outcomes (handles then only report status),
        for bulk work whose callers read counters rather than return values.
        Raises what :meth:`submit` raises. On BackendFull none of the calls was queued
        (on a Redis Cluster: none of those whose shard's master is full).
        """
        ids, _raws = self.submit_raw(task, calls, results=results)
        state = cast(StateManager, self.state)  # submit_raw checked the orchestrator runs
        return [TaskHandle(state, task_id) for task_id in ids]

    def submit_with(
        self,
        task: str | Callable[..., Any],
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        delay_s: float | None = None,
        at: float | datetime.datetime | None = None,
        max_retries: int | None = None,
        time_limit_s: float | None = None,
        partition_key: str | None = None,
        result: bool = True,
    ) -> TaskHandle:
        """Queue one task with options: run it ``delay_s`` seconds from now or ``at`` a
        time (epoch seconds or an aware datetime), with its own retry and time limits.

        Tasks sharing a ``partition_key`` (say, a repository name) run one at a time,
        in submission order, while other keys run in parallel; the order holds when
        workers die or join (a key's next task is released only by the step that
        settles its predecessor). Keys are 1-200 characters of ``A-Z a-z 0-9 _ . : / @ + -``.

        A delayed task waits in a sorted set and is moved to the queue atomically when
        due by whichever process claims next (workers, every ~0.1-0.2 s, and the
        supervisor's tick): never early, usually within 0.2 s of its time.
        """
        if delay_s is not None and at is not None:
            raise ConfigurationError("give delay_s or at, not both")
        if delay_s is not None and not delay_s >= 0:
            raise ConfigurationError(f"delay_s must be a number >= 0, got {delay_s!r}")
        due = None
        if at is not None:
            due = at.timestamp() if isinstance(at, datetime.datetime) else float(at)
        ids, _ = self.submit_raw(
            task, [(tuple(args), dict(kwargs or {}))], results=result, due_at=due, delay_s=delay_s,
            max_retries=max_retries, time_limit_s=time_limit_s, partition_key=partition_key,
        )
        return TaskHandle(cast(StateManager, self.state), ids[0])  # submit_raw checked the orchestrator runs

    def submit_raw(
        self,
        task: str | Callable[..., Any],
        calls: Iterable[Call],
        *,
        results: bool = True,
        due_at: float | None = None,
        delay_s: float | None = None,
        max_retries: int | None = None,
        time_limit_s: float | None = None,
        partition_key: str | None = None,
    ) -> tuple[list[str], list[str]]:
        """Like :meth:`submit_many`, returning ids and the queued JSON (for cancelling).

        With ``partition_key`` the calls run one at a time, in this order (see submit_with).
        """
        state = self._require_running()
        ids, raws = encode_calls(
            task_name(task, strict=self.strict_names), calls, max_payload_bytes=self.settings.max_payload_bytes,
            results=results, max_retries=max_retries, time_limit_s=time_limit_s, partition_key=partition_key,
        )
        state.submit(raws, due_at=due_at, delay_s=delay_s)
        return ids, raws

    def handle(self, task_id: str) -> TaskHandle:
        """A handle for a task submitted anywhere (another process, the CLI), by id."""
        return TaskHandle(self._require_running(), task_id)

    def cancel_queued(self, raw: str) -> bool:
        """Remove one task from the queue if no worker has claimed it yet."""
        return self._require_running().cancel_queued(raw)

    # -- waiting and reading --------------------------------------------------------------
    def pending(self) -> int:
        """Tasks queued, in flight, or waiting for a retry right now."""
        depths = self._require_running().queue_depths()
        return sum(depths.get(part, 0) for part in ("pending", "inflight", "delayed", "limited", "laned"))

    def wait(self, timeout: float | None = None, progress: Callable[[dict[str, int]], None] | None = None) -> bool:
        """Block until the queue, every in-flight list and the delayed set are empty.

        Returns True when drained, False on timeout. In non-parallel mode the tasks
        run here, in this call. ``progress`` is called with the counters every
        ~0.5 s. Raises WorkerDied if workers die in a loop at start-up.
        """
        self._require_running()
        deadline = None if timeout is None else time.monotonic() + timeout
        next_progress = time.monotonic()
        while True:
            if self._local_worker is not None:
                self._local_worker.run_batch(block=False)
            self.check_health()
            if progress is not None and time.monotonic() >= next_progress:
                progress(self.counters())
                next_progress = time.monotonic() + 0.5
            if self.pending() == 0:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if self._local_worker is None:
                time.sleep(POLL_INTERVAL_S)

    def check_health(self) -> None:
        """Raise WorkerDied if workers keep dying at start-up (a crash loop)."""
        if self.supervisor is not None and self.supervisor.failure is not None:
            raise self.supervisor.failure

    def counters(self) -> dict[str, int]:
        """The global counters (``total_work_created``, ``total_work_completed``, ...)."""
        return self._require_running().get_counters()

    def worker_ids(self) -> list[str]:
        """Ids of the workers this orchestrator started (including replacements)."""
        if self.supervisor is not None:
            return self.supervisor.started_ids()
        if self._local_worker is not None:
            return [self._local_worker.worker_id]
        return list(self._stopped_worker_ids)

    def worker_counters(self) -> dict[str, dict[str, int]]:
        """``{worker id: {"completed": n, "errors": m}}`` for this orchestrator's workers."""
        return self._require_running().worker_counters(self.worker_ids())

    def monitor_command(self) -> str | None:
        """A redis-cli line that follows the event and metrics streams (embedded only)."""
        return monitor_command(cast(str, self.server.socket_path)) if self.server else None

    def audit(self) -> dict[str, Any]:
        """Counters checked against each other and the streams (see StateManager.audit)."""
        return self._require_running().audit()


__all__ = ["ContinuousOrchestrator"]
