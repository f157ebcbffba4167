"""Logging (loguru), as a guest: the library logs, the application decides where to.

Importing ``orchestrator_mp`` changes nothing in loguru's global configuration: no
sink is added or removed and ``logger.configure`` is never called. The package only
calls ``logger.disable("orchestrator_mp")``, loguru's convention for libraries, so
its records are dropped until the application opts in::

    from loguru import logger
    logger.enable("orchestrator_mp")          # our lines now reach the application's sinks

Every record the package writes carries ``extra["worker_id"]`` (``main`` in the
process that created the orchestrator, the worker id in a worker) and
``extra["pid"]`` (the writing process's own pid), added by a patcher bound to the
package's ``logger`` rather than to loguru's global one.

Worker processes are forked, so they inherit the parent's loguru state as it was at
the fork: its sinks, and whether ``orchestrator_mp`` is enabled. A library user's
workers therefore log exactly where (and whether) the application logs, and
:func:`bind_worker` only records the worker id for the patcher; it adds no sink.

The command line is an application: each command calls :func:`configure`, which
enables the package's records and replaces all sinks with a stderr sink whose lines
name the process (``main`` or the worker id, and the pid), plus a JSON-lines file
with ``--log-json``. The level comes from ``--log-level`` or the
``ORCHESTRATOR_MP_LOG_LEVEL`` environment variable (``Settings.log_level``). An
application that wants the same lines may call :func:`configure` itself.

Library code logs through ``logger`` from here and never prints.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from loguru import logger as _loguru_logger

PACKAGE = "orchestrator_mp"

FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[worker_id]}</cyan>[{extra[pid]}] {message}"
)

# This process's role in the records it writes: "main", or the worker id after the
# fork (a module global: each forked process has its own copy).
_identity = {"worker_id": "main"}


def _stamp(record: Any) -> None:
    """Name the writing process in ``record["extra"]``: its role and its own pid."""
    record["extra"]["worker_id"] = _identity["worker_id"]
    record["extra"]["pid"] = os.getpid()


# The package's logger: loguru's, with the stamp bound to it alone (``patch`` returns a
# new logger sharing the global sinks; the global logger is not changed).
logger = _loguru_logger.patch(_stamp)

_loguru_logger.disable(PACKAGE)


class _CurrentStderr:
    """A stream sink that writes to whatever ``sys.stderr`` is at the time.

    ``run``'s live progress display (rich) replaces ``sys.stderr`` while it draws, so
    log lines written meanwhile appear above the display instead of through it.
    """

    def write(self, message: str) -> None:
        sys.stderr.write(message)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False


def configure(level: str = "INFO", json_path: str | None = None) -> None:
    """Set up loguru for a program of ours (the CLI, a benchmark script): the
    application's call, never the library's.

    Enables the package's records and replaces all sinks: stderr at ``level`` with
    :data:`FORMAT`, plus a serialized JSON-lines file at ``json_path`` if given. Every
    record, including those of task code, is stamped with the process's worker id and
    pid (a global patcher: this program owns loguru).
    """
    _loguru_logger.remove()
    _loguru_logger.configure(patcher=_stamp)
    _loguru_logger.enable(PACKAGE)
    _loguru_logger.add(
        _CurrentStderr(), level=level, format=FORMAT, colorize=None, backtrace=False, diagnose=False
    )
    if json_path:
        _loguru_logger.add(json_path, level=level, serialize=True, backtrace=False, diagnose=False)


def bind_worker(worker_id: str) -> None:
    """Make every later record of this (forked worker) process name ``worker_id``.

    Process-local: it changes what the patcher stamps, not loguru's configuration.
    """
    _identity["worker_id"] = worker_id


__all__ = ["logger", "configure", "bind_worker", "FORMAT", "PACKAGE"]
