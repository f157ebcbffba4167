"""``worker``: start workers on this host that join a running orchestrator.

    python -m orchestrator_mp worker --redis-url redis://:PASSWORD@HOST:6379 --workers 4
    python -m orchestrator_mp worker --db jobs.db --workers 2     # join a local embedded run

The workers claim from the same queue and are watched like any other: the parent
here restarts them when they die, and every orchestrator or worker command watching
the server reclaims their partitions if this whole host vanishes (their leases lapse).
"""
from __future__ import annotations

import argparse
from typing import Any

from ..config import default_workers
from ..connection import redact
from ..database import live_url
from ..exceptions import ConfigurationError
from ..log import configure as configure_logging
from ..orchestrator import ContinuousOrchestrator
from .common import (
    EXIT_OK,
    Signals,
    add_common_options,
    add_worker_options,
    import_task_modules,
    say,
    settings_from,
)
from .progress import Sampler, make_display
from .run import serve


def add_parser(commands: Any) -> None:
    worker = commands.add_parser("worker", help="start workers on this host that join a running orchestrator")
    add_common_options(worker)
    add_worker_options(worker)
    worker.set_defaults(handler=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    """Join the server at ``--redis-url`` (or the live owner of ``--db``) until a signal."""
    settings = settings_from(
        args, workers=args.workers or default_workers(), batch_size=args.batch, lease_s=args.lease
    )
    configure_logging(settings.log_level, settings.log_json)
    url = live_url(settings)
    if url is None:
        raise ConfigurationError(
            f"no orchestrator serves {settings.db_path}: start one with `run`, or give --redis-url"
        )
    import_task_modules(args.imports)
    signals = Signals()
    signals.install()
    with ContinuousOrchestrator(settings=settings.evolve(redis_url=url)) as orch:
        say(f"joined {redact(url)} with {settings.workers} worker(s): {', '.join(orch.worker_ids())}")
        display = make_display(True, None, 1.0)
        try:
            serve(orch, signals, Sampler(orch, orch.counters(), None), display, quiet=False)
        finally:
            display.close()
        if signals.count:
            say("stopping: finishing running tasks (a second Ctrl-C kills the workers)")
        orch.stop_workers(force=lambda: signals.count > 1)
        done = orch.worker_counters()
    completed = sum(w["completed"] for w in done.values())
    errors = sum(w["errors"] for w in done.values())
    say(f"left: these workers completed {completed} task(s), {errors} error(s)")
    return EXIT_OK
