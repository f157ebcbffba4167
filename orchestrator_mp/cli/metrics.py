"""``metrics``: serve Prometheus text format read from a running orchestrator.

Every scrape reads Redis (``metrics.py``); like ``monitor`` it attaches to
whatever serves ``--db`` right now and never starts a server of its own, so it
can run before, during and across ``run`` s (``orchestrator_mp_up`` is 0 while
nothing serves the database).
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from ..database import Attachment
from ..exceptions import ConfigurationError
from ..log import configure as configure_logging
from ..metrics import OrchestratorCollector, serve
from .common import (
    EXIT_OK,
    Signals,
    add_common_options,
    non_negative_int,
    say,
    settings_from,
)

DEFAULT_PORT = 9808


def add_parser(commands: Any) -> None:
    metrics = commands.add_parser("metrics", help="serve Prometheus metrics (counters, gauges, latency histograms)")
    add_common_options(metrics)
    metrics.add_argument(
        "--port", type=non_negative_int, default=DEFAULT_PORT, metavar="PORT",
        help="TCP port to listen on (default %(default)s; 0 picks a free one)",
    )
    metrics.add_argument(
        "--host", default="127.0.0.1", metavar="ADDR",
        help="address to listen on (default %(default)s; 0.0.0.0 for every interface)",
    )
    metrics.set_defaults(handler=cmd_metrics)


def cmd_metrics(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_json)
    signals = Signals()
    signals.install()
    with Attachment(settings) as attachment:
        collector = OrchestratorCollector(attachment.get, on_error=attachment.reset)
        try:
            server, thread = serve(collector, args.port, args.host)
        except OSError as exc:
            raise ConfigurationError(f"--port {args.port}: cannot listen on {args.host}:{args.port}: {exc}") from None
        try:
            source = settings.redis_url or settings.db_path
            say(f"serving Prometheus metrics on http://{args.host}:{server.server_port}/metrics for {source}; Ctrl-C to stop")
            while not signals.count:
                time.sleep(0.1)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
    return EXIT_OK
