"""TaskHandle: the caller's view of one submitted task (status, result, exception).

Results are stored per task as JSON under ``result:{id}`` by the same atomic step
that counts the task, so the result a caller sees is the counted one, even when a
recovery made the task run twice. They expire after ``Settings.result_ttl_s``.
Waiting is a blocking server read (BLMOVE of the one-element list onto itself),
not a polling loop, and any number of handles may wait on the same task.
"""
from __future__ import annotations

import time
from typing import Any

from .exceptions import TaskFailed
from .state import StateManager

FINAL = ("done", "failed", "dead_lettered")


def failure_from(task_id: str, stored: dict[str, Any]) -> TaskFailed:
    """The TaskFailed a stored failure stands for (type, message and traceback as text)."""
    return TaskFailed(
        task_id,
        stored.get("error_type", ""),
        stored.get("message", ""),
        stored.get("traceback", ""),
        stored.get("category", ""),
    )


class TaskHandle:
    """A submitted task, by id; rebuild one anywhere with ``orchestrator.handle(id)``.

    Args:
        state: a state manager of the process holding the handle.
        task_id: the task's id.
    """

    def __init__(self, state: StateManager, task_id: str) -> None:
        self._state = state
        self.id = task_id

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"

    def __str__(self) -> str:
        return self.id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def status(self) -> str:
        """``queued``, ``delayed`` (waiting for a retry), ``running``, ``done``, ``failed``,
        ``dead_lettered``, or ``unknown`` (never submitted, or its result expired)."""
        return self._state.task_status(self.id)[0]

    def done(self) -> bool:
        """True once the task has a final outcome (done, failed or dead-lettered)."""
        return self._state.get_result(self.id) is not None

    def _outcome(self, timeout: float | None) -> dict[str, Any]:
        stored = self._state.wait_result(self.id, timeout)
        if stored is None:
            raise TimeoutError(f"task {self.id} has no result after {timeout} s (status: {self.status()})")
        return stored

    def result(self, timeout: float | None = None) -> Any:
        """The task's return value, waiting up to ``timeout`` seconds (None: forever).

        Raises:
            TaskFailed: the task failed for good (remote type, message, traceback).
            TimeoutError: no final outcome within ``timeout``.
        """
        stored = self._outcome(timeout)
        if stored.get("status") == "done":
            return stored.get("result")
        raise failure_from(self.id, stored)

    def exception(self, timeout: float | None = None) -> TaskFailed | None:
        """The TaskFailed the task ended with, or None if it succeeded (waits like result)."""
        stored = self._outcome(timeout)
        return None if stored.get("status") == "done" else failure_from(self.id, stored)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the task has a final outcome; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._outcome(None if deadline is None else max(0.001, deadline - time.monotonic()))
        except TimeoutError:
            return False
        return True
