"""A directory of state that processes share safely: one JSON document and append-only
logs, changed in transactions under an fcntl lock. The storage of FileStateManager.

::

    PATH.files/
      lock              flock'd: shared while reading, exclusive while writing
      state.json        the committed document (written to a temp file, fsync'd, renamed)
      NAME.GEN.log      append-only logs (queue, dead letters, streams), one JSON value a line

Commit protocol (crash-safe without a journal): a transaction first appends to its
logs and fsyncs them, then replaces ``state.json``, which records every log's
committed size, and fsyncs the directory. Bytes past a log's committed size belong
to a transaction that never committed: readers never look at them, and the next
writer truncates them before appending. A log is compacted (its live part copied to
generation GEN+1) when most of it has been consumed or trimmed.

Every operation opens the lock file anew, so two threads of one process exclude
each other like two processes. A fork while another thread holds the lock would
hand the child a duplicate of that descriptor, and flock locks belong to the
descriptor, not the process: the lock would outlive the parent's release for as
long as the child lives (a worker forked during a parent's read deadlocked the
parent's next write this way). So open lock descriptors are tracked under a guard
that fork waits for, and a child closes its duplicates at once (closing, never
unlocking: the parent's lock stays the parent's).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from typing import Any, Iterator

from ..exceptions import BackendUnavailable

_DOCUMENT = "state.json"
_LOCK = "lock"
_COMPACT_BYTES = 1 << 20
_READ_CHUNK = 1 << 16

# Lock descriptors open in this process right now, and the guard fork holds so that
# none is opened or closed while the process is being copied.
_OPEN_LOCK_FDS: set[int] = set()
_FDS_GUARD = threading.Lock()


def _close_inherited_lock_fds() -> None:
    global _FDS_GUARD
    for fd in _OPEN_LOCK_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _OPEN_LOCK_FDS.clear()
    _FDS_GUARD = threading.Lock()


os.register_at_fork(
    before=lambda: _FDS_GUARD.acquire(),
    after_in_parent=lambda: _FDS_GUARD.release(),
    after_in_child=_close_inherited_lock_fds,
)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_log() -> dict[str, Any]:
    return {"gen": 0, "start": 0, "size": 0, "count": 0, "last_id": "0-0"}


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id ``ms-seq`` as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _encode_line(value: Any) -> bytes:
    return (json.dumps(value, separators=(",", ":")) + "\n").encode("ascii")


class Reader:
    """Reads committed state: the document and the committed part of each log."""

    def __init__(self, store: "FileStore", doc: dict[str, Any]) -> None:
        self.store = store
        self.doc = doc

    def log(self, name: str) -> dict[str, Any]:
        return self.doc["logs"].get(name) or _new_log()

    def count(self, name: str) -> int:
        count: int = self.log(name)["count"]
        return count

    def tail(self, name: str, n: int) -> list[Any]:
        """The newest ``n`` committed values of a log, oldest first."""
        rec = self.log(name)
        if n <= 0 or rec["count"] == 0:
            return []
        with open(self.store.log_path(name, rec["gen"]), "rb") as handle:
            end = rec["size"]
            buffer = b""
            position = end
            while position > rec["start"] and buffer.count(b"\n") <= n:
                step = min(_READ_CHUNK, position - rec["start"])
                position -= step
                handle.seek(position)
                buffer = handle.read(step) + buffer
        lines = buffer.split(b"\n")[:-1]  # the committed part ends with a newline
        if position > rec["start"]:
            lines = lines[1:]  # the first piece may be a partial line
        return [json.loads(line) for line in lines[-n:]]

    def values(self, name: str) -> list[Any]:
        """Every committed value of a log, oldest first (O(log size): for rare operations)."""
        return self.read_oldest(name, self.count(name))[0]

    def scan(self, name: str, offset: int) -> tuple[list[tuple[int, Any]], int]:
        """Committed values from byte ``offset`` (a line start, or anything before the log's
        start) to the committed end, each with its offset; and that end."""
        rec = self.log(name)
        begin, end = max(offset, rec["start"]), rec["size"]
        if begin >= end:
            return [], end
        with open(self.store.log_path(name, rec["gen"]), "rb") as handle:
            handle.seek(begin)
            data = handle.read(end - begin)
        found = []
        for line in data.split(b"\n")[:-1]:
            found.append((begin, json.loads(line)))
            begin += len(line) + 1
        return found, end

    def value_at(self, name: str, offset: int) -> Any:
        """The committed value at byte ``offset`` (as :meth:`scan` reported it)."""
        with open(self.store.log_path(name, self.log(name)["gen"]), "rb") as handle:
            handle.seek(offset)
            return json.loads(handle.readline())

    def after(self, name: str, last_id: str, count: int) -> list[Any]:
        """The oldest ``count`` entries of a stream log whose id is past ``last_id``."""
        rec = self.log(name)
        after = entry_key(last_id)
        if rec["count"] == 0 or entry_key(rec["last_id"]) <= after:
            return []
        n = 64
        while True:
            entries = self.tail(name, n)
            if n >= rec["count"] or entry_key(entries[0][0]) <= after:
                break
            n *= 4
        return [entry for entry in entries if entry_key(entry[0]) > after][:count]

    def read_oldest(self, name: str, n: int) -> tuple[list[Any], int]:
        """The oldest ``n`` committed values and the byte length they occupy."""
        rec = self.log(name)
        n = min(n, rec["count"])
        if n <= 0:
            return [], 0
        values: list[Any] = []
        consumed = 0
        with open(self.store.log_path(name, rec["gen"]), "rb") as handle:
            handle.seek(rec["start"])
            while len(values) < n:
                line = handle.readline()
                if not line.endswith(b"\n"):
                    raise BackendUnavailable(f"{self.store.directory}: log {name} is shorter than its committed size")
                consumed += len(line)
                values.append(json.loads(line))
        return values, consumed


class Transaction(Reader):
    """A writer's view: a private copy of the document plus pending appends."""

    def __init__(self, store: "FileStore", doc: dict[str, Any]) -> None:
        super().__init__(store, doc)
        self.pending: dict[str, list[bytes]] = {}
        self.edits: dict[str, list[Any]] = {}

    def _rec(self, name: str) -> dict[str, Any]:
        rec: dict[str, Any] = self.doc["logs"].setdefault(name, _new_log())
        return rec

    def append(self, name: str, values: list[Any]) -> None:
        self.pending.setdefault(name, []).extend(_encode_line(value) for value in values)

    def pop_oldest(self, name: str, n: int) -> list[Any]:
        """Consume the oldest ``n`` values (queue semantics): committed ones first, then
        ones appended in this transaction."""
        values, consumed = self.read_oldest(name, n)
        rec = self._rec(name)
        rec["start"] += consumed
        rec["count"] -= len(values)
        short = n - len(values)
        if short > 0 and self.pending.get(name):
            taken, self.pending[name] = self.pending[name][:short], self.pending[name][short:]
            values += [json.loads(line) for line in taken]
        return values

    def editable(self, name: str) -> list[Any]:
        """The log's committed values as a list to change in place (oldest first); at
        commit they replace the log, as a new generation. For rare edits (removing
        entries from the middle): it costs a copy of the whole log."""
        if name not in self.edits:
            self.edits[name] = self.values(name)
        return self.edits[name]

    def next_id(self, name: str) -> str:
        """A stream entry id ``ms-seq``, increasing within the log (as Redis makes them)."""
        rec = self._rec(name)
        last_ms, last_seq = (int(part) for part in rec["last_id"].split("-"))
        now_ms = int(time.time() * 1000)
        entry_id = f"{now_ms}-0" if now_ms > last_ms else f"{last_ms}-{last_seq + 1}"
        rec["last_id"] = entry_id
        return entry_id

    def trim(self, name: str, maxlen: int) -> None:
        """Drop the oldest committed entries beyond ``maxlen`` (approximately, like MAXLEN ~)."""
        rec = self._rec(name)
        excess = rec["count"] + len(self.pending.get(name, ())) - maxlen
        if excess > max(100, maxlen // 10):
            self.pop_oldest(name, min(excess, rec["count"]))

    # -- commit -------------------------------------------------------------------------------
    def commit(self) -> None:
        directory = self.store.directory
        obsolete = [self._next_generation(name, values) for name, values in self.edits.items()]
        created = False
        for name, lines in self.pending.items():
            rec = self._rec(name)
            path = self.store.log_path(name, rec["gen"])
            created |= not os.path.exists(path)
            data = b"".join(lines)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, rec["size"])  # drop what an uncommitted writer left
                os.pwrite(fd, data, rec["size"])
                os.fsync(fd)
            finally:
                os.close(fd)
            rec["size"] += len(data)
            rec["count"] += len(lines)
        obsolete += [self._compact(name) for name in list(self.doc["logs"]) if self._needs_compaction(name)]
        if created or obsolete:
            _fsync_dir(directory)
        temporary = os.path.join(directory, _DOCUMENT + ".tmp")
        with open(temporary, "wb") as handle:
            handle.write(json.dumps(self.doc, separators=(",", ":")).encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, os.path.join(directory, _DOCUMENT))
        _fsync_dir(directory)
        for path in obsolete:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _needs_compaction(self, name: str) -> bool:
        rec = self.doc["logs"][name]
        needed: bool = rec["start"] > _COMPACT_BYTES and rec["start"] * 2 > rec["size"]
        return needed

    def _compact(self, name: str) -> str:
        """Copy the live part into the next generation; returns the old file to delete."""
        rec = self.doc["logs"][name]
        with open(self.store.log_path(name, rec["gen"]), "rb") as source:
            source.seek(rec["start"])
            live = source.read(rec["size"] - rec["start"])
        return self._write_generation(name, live)

    def _next_generation(self, name: str, values: list[Any]) -> str:
        """The edited values as the log's next generation; returns the old file to delete."""
        old = self._write_generation(name, b"".join(_encode_line(value) for value in values))
        self._rec(name)["count"] = len(values)
        return old

    def _write_generation(self, name: str, data: bytes) -> str:
        rec = self._rec(name)
        old = self.store.log_path(name, rec["gen"])
        with open(self.store.log_path(name, rec["gen"] + 1), "wb") as target:
            target.write(data)
            target.flush()
            os.fsync(target.fileno())
        rec.update(gen=rec["gen"] + 1, start=0, size=len(data))
        return old


class FileStore:
    """The directory, its lock and its transactions.

    Args:
        directory: created if missing (its parent must exist).
        initial: the document of an empty store.
    """

    def __init__(self, directory: str, initial: dict[str, Any]) -> None:
        self.directory = os.path.abspath(directory)
        self.initial = initial
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailable(f"cannot create the state directory {self.directory}: {exc}") from None
        self.lock_path = os.path.join(self.directory, _LOCK)

    def log_path(self, name: str, gen: int) -> str:
        safe = name.replace(":", "_").replace("/", "_")
        return os.path.join(self.directory, f"{safe}.{gen}.log")

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        with _FDS_GUARD:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            _OPEN_LOCK_FDS.add(fd)
        try:
            fcntl.flock(fd, mode)  # may block: the guard is not held here
            yield
        finally:
            with _FDS_GUARD:
                _OPEN_LOCK_FDS.discard(fd)
                os.close(fd)  # closing the descriptor releases the flock

    def _load(self) -> dict[str, Any]:
        doc: dict[str, Any]
        try:
            with open(os.path.join(self.directory, _DOCUMENT), "rb") as handle:
                doc = json.loads(handle.read())
        except FileNotFoundError:
            doc = json.loads(json.dumps(self.initial))
        return doc

    @contextlib.contextmanager
    def read(self) -> Iterator[Reader]:
        """A consistent view of the committed state (shared lock)."""
        with self._locked(fcntl.LOCK_SH):
            yield Reader(self, self._load())

    @contextlib.contextmanager
    def write(self) -> Iterator[Transaction]:
        """A transaction (exclusive lock), committed when the block ends without an error
        and changed something (a transaction that only looked costs no fsync)."""
        with self._locked(fcntl.LOCK_EX):
            doc = self._load()
            original = json.loads(json.dumps(doc))
            txn = Transaction(self, doc)
            yield txn
            if txn.pending or txn.edits or txn.doc != original:
                txn.commit()
