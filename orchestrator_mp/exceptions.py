"""The whole exception tree of orchestrator_mp, and nothing else.

Every error the library raises on purpose derives from :class:`OrchestratorError`;
where the meaning overlaps a built-in (a bad value, a missing name) it derives
from that built-in too, so callers may catch either.
"""
from __future__ import annotations


class OrchestratorError(Exception):
    """Root of every error raised by orchestrator_mp."""


class ConfigurationError(OrchestratorError, ValueError):
    """A setting or command-line value is invalid."""


class TaskError(OrchestratorError):
    """Something is wrong with a task: its name, its payload or its execution."""


class UnknownTaskError(TaskError, LookupError):
    """A task name is not registered in this process."""

    def __init__(self, name: str) -> None:
        self.name = name
        message = f"task {name!r} is not registered; register it with @task before submitting"
        super().__init__(message)


class PayloadError(TaskError, ValueError):
    """A task payload (or result) cannot be encoded or decoded as JSON."""

    def __init__(self, data: object, error: str) -> None:
        self.data = data
        self.error = error
        shown = repr(data)
        if len(shown) > 200:
            shown = shown[:197] + "..."
        message = f"bad task payload: {error} (received {shown})"
        super().__init__(message)


class TaskFailed(TaskError):
    """A task failed for good; carries the remote error as text, never as an object.

    ``category`` says how (task_error, timeout, bad_result, poison, unknown_task,
    bad_payload); ``error_type`` is the remote exception's class name.
    """

    def __init__(
        self, task_id: str, error_type: str, message: str, remote_traceback: str = "", category: str = ""
    ) -> None:
        self.task_id = task_id
        self.error_type = error_type
        self.remote_message = message
        self.remote_traceback = remote_traceback
        self.category = category
        text = f"task {task_id} failed ({category or 'error'}): {message}"
        if remote_traceback:
            text += f"\n\nRemote traceback:\n{remote_traceback.rstrip()}"
        super().__init__(text)


class StateError(OrchestratorError):
    """The shared state could not be read or written as asked."""


class Fenced(StateError):
    """A worker wrote with an epoch older than its partition's: it was declared dead."""

    def __init__(self, worker_id: str, epoch: int) -> None:
        self.worker_id = worker_id
        self.epoch = epoch
        super().__init__(f"worker {worker_id} is fenced: epoch {epoch} is no longer current")


class BackendUnavailable(StateError):
    """The state backend (Redis server, file directory) cannot be reached."""


class BackendFull(StateError):
    """Redis refused a write because it reached ``maxmemory`` (an OOM reply, noeviction).

    Nothing of the refused step was written (Redis refuses a script at its first write
    that may grow memory, before anything lands), so it is safe to send again once
    memory is freed. Workers wait and retry; submitters get it as back-pressure.
    ``used_bytes`` and ``max_bytes`` are the server's figures when they could be read.
    """

    def __init__(self, message: str, used_bytes: int | None = None, max_bytes: int | None = None) -> None:
        self.used_bytes = used_bytes
        self.max_bytes = max_bytes
        super().__init__(message)


class LockTimeout(StateError):
    """The lock-based baseline gave up waiting for a lock (or kept losing its lease)."""

    def __init__(self, lock: str, waited_s: float, reason: str = "still held by another owner") -> None:
        self.lock = lock
        self.waited_s = waited_s
        message = f"lock {lock!r}: gave up after {waited_s:.3f}s ({reason})"
        super().__init__(message)


class ServerError(OrchestratorError):
    """The embedded Redis server failed to start, was in use, or died."""


class ServerNotRunnable(ServerError):
    """The redis-server binary is missing or cannot run on this machine.

    The orchestrator answers this one (and only this one) by falling back to the
    file-based state; a server that runs but cannot load the data is a ServerError.
    """


class DatabaseInUse(ServerError):
    """Another live orchestrator owns this database file."""

    def __init__(self, db_path: str, owner: dict[str, object]) -> None:
        self.db_path = db_path
        self.owner = owner
        pid = owner.get("pid", "?")
        role = owner.get("role", "orchestrator")
        message = (
            f"database {db_path} is in use by a live {role} (pid {pid}); "
            f"reach it with `status --db {db_path}` / `enqueue --db {db_path}`, "
            f"or stop it first"
        )
        super().__init__(message)


class WorkerDied(OrchestratorError):
    """A worker process ended without being asked to."""

    def __init__(self, worker_id: str, pid: int | None, exitcode: int | None) -> None:
        self.worker_id = worker_id
        self.pid = pid
        self.exitcode = exitcode
        self.signal = -exitcode if exitcode is not None and exitcode < 0 else None
        how = f"signal {self.signal}" if self.signal else f"exit code {exitcode}"
        super().__init__(f"worker {worker_id} (pid {pid}) died with {how}")


class SupervisorClosed(OrchestratorError, RuntimeError):
    """The orchestrator was used after it was closed (or before it started)."""
