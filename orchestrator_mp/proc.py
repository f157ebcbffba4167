"""Process helpers: tie a child's life to its parent's, and recognise a process by name.

Linux only (``prctl``, ``/proc``), like the rest of the package's process handling.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import queue
import signal
import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

T = TypeVar("T")


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent thread dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


class SpawnThread:
    """Runs every call given to :meth:`run` in one thread that lives until :meth:`close`.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the
    process: a child started (with :func:`die_with_parent`) from a short-lived thread
    would be killed with that thread. Starting it from here ties it to this one.
    """

    def __init__(self, name: str = "spawner") -> None:
        self._requests: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def run(self, action: Callable[[], T]) -> T:
        """``action()`` called in the spawning thread; its result, or its exception raised here."""
        future: Future[T] = Future()
        self._requests.put((action, future))
        return future.result()

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            action, future = request
            try:
                future.set_result(action())
            except BaseException as exc:  # handed to the caller's thread
                future.set_exception(exc)


def runs_program(pid: int, program: bytes) -> bool:
    """Whether process ``pid`` exists and its command line contains ``program``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return program in handle.read()
    except OSError:
        return False


__all__ = ["die_with_parent", "SpawnThread", "runs_program"]
