"""Logging, configured in one place (loguru).

``configure`` installs a stderr sink (and optionally a JSON-lines file) whose lines
carry the process role, worker id and pid; workers call :func:`bind_worker` after
the fork so every line they write names them. Library code logs through
``logger`` from here and never prints.

The level comes from ``--log-level`` or the ``ORCHESTRATOR_MP_LOG_LEVEL``
environment variable (``Settings.log_level``); ``--log-json FILE`` adds a file
sink with ``serialize=True``: one JSON object per line whose ``record.extra``
holds ``worker_id`` and ``pid``.
"""
from __future__ import annotations

import os
import sys

from loguru import logger

FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[worker_id]}</cyan>[{extra[pid]}] {message}"
)

logger.configure(extra={"worker_id": "main", "pid": os.getpid()})


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
    """Replace all sinks: stderr at ``level``, plus a serialized JSON file if asked."""
    logger.remove()
    logger.configure(extra={"worker_id": "main", "pid": os.getpid()})
    logger.add(_CurrentStderr(), level=level, format=FORMAT, colorize=None, backtrace=False, diagnose=False)
    if json_path:
        logger.add(json_path, level=level, serialize=True, backtrace=False, diagnose=False)


def configure_if_untouched(level: str, json_path: str | None = None) -> None:
    """Apply our settings only while loguru still has its pristine default sink.

    A library user who configured loguru (removed handler 0) keeps their setup.
    """
    try:
        logger.remove(0)
    except ValueError:
        return
    configure(level, json_path)


def bind_worker(worker_id: str) -> None:
    """Make every later line of this process carry the worker id and its pid."""
    logger.configure(extra={"worker_id": worker_id, "pid": os.getpid()})


__all__ = ["logger", "configure", "configure_if_untouched", "bind_worker"]
