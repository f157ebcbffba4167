"""Ownership of a database path: ``PATH.lock``, flock'd by the live owner.

The file holds the owner's JSON record (pid, role, and what the owner adds: the
embedded server's socket and pid, or the file state's directory), so commands such
as ``status`` and ``enqueue`` find the live owner's socket instead of starting a
second server. Liveness is the flock, never the file's content: a record left by a
killed owner reads as nobody.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any, cast

from .exceptions import ConfigurationError, DatabaseInUse

# Open lock descriptors of this process; closed in forked children so a worker
# never keeps a database locked after its parent died.
_LOCK_FDS: set[int] = set()


def _close_lock_fds_in_child() -> None:
    for fd in list(_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCK_FDS.clear()


os.register_at_fork(after_in_child=_close_lock_fds_in_child)


def lock_path_for(db_path: str) -> str:
    return os.path.abspath(db_path) + ".lock"


def read_owner(db_path: str) -> dict[str, Any] | None:
    """Who holds ``db_path`` right now: the owner's JSON record, or None if nobody.

    Liveness is decided by the flock, not by the file's content, so a record left
    by a crashed owner reads as None.
    """
    path = lock_path_for(db_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            try:
                owner = json.loads(text) if text.strip() else {}
            except ValueError:
                owner = {}
            return owner if isinstance(owner, dict) else {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class DatabaseLock:
    """Ownership of a database path: an flock on ``PATH.lock`` holding the owner's record.

    The embedded server takes it before starting; the file-based state takes it
    without any server, so one database has one owner either way.

    Raises (from :meth:`acquire`): DatabaseInUse when another live process holds it.
    """

    def __init__(self, db_path: str, role: str = "orchestrator") -> None:
        self.db_path = os.path.abspath(db_path)
        self.role = role
        self.fd: int | None = None

    def acquire(self) -> "DatabaseLock":
        path = lock_path_for(self.db_path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseInUse(self.db_path, read_owner(self.db_path) or {}) from None
        self.fd = fd
        _LOCK_FDS.add(fd)
        return self

    def previous_record(self) -> dict[str, Any]:
        """The record a previous owner left (it may have been killed); {} if none."""
        fd = cast(int, self.fd)  # held: called after acquire()
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 65536).decode("utf-8", "replace")
        try:
            record = json.loads(text) if text.strip() else {}
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def write_record(self, **fields: Any) -> None:
        """Publish who owns the database (pid, role, and what the caller adds)."""
        record = {"pid": os.getpid(), "role": self.role, "db": self.db_path, "started_at": time.time(), **fields}
        fd = cast(int, self.fd)  # held: called after acquire()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        _LOCK_FDS.discard(self.fd)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "DatabaseLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def check_db_path(db_path: str) -> None:
    """Refuse a database path that cannot be one, before anything waits on it or starts
    a server on it: a directory, or a file in a directory that does not exist.

    Raises:
        ConfigurationError: naming the path and what is wrong with it.
    """
    path = os.path.abspath(db_path)
    if os.path.isdir(path):
        message = f"database {db_path} is a directory; give the path of a file in it (say {os.path.join(db_path, 'jobs.db')})"
        raise ConfigurationError(message)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ConfigurationError(f"database {db_path}: its directory {directory} does not exist")


__all__ = ["DatabaseLock", "read_owner", "lock_path_for", "check_db_path"]
