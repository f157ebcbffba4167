"""``bench``: lock-free vs lock-based vs file, contention and end to end, side by side.

    python -m orchestrator_mp bench [--workers 1,2,4,8] [--quick] [--state KIND,...]
                                    [--json] [--check --min-ratio R]

The table goes to stdout (to stderr with ``--json``, which puts the report on
stdout); progress lines go to stderr. ``--check`` is the CI throughput check.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from .. import bench
from ..charts import plot_report
from ..config import STATE_KINDS
from ..exceptions import ConfigurationError
from ..log import configure as configure_logging
from .common import EXIT_FAILURE, EXIT_OK, positive_int, say


def count_list(text: str) -> tuple[int, ...]:
    values = tuple(positive_int(part.strip()) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2,4,8, got {text!r}")
    return tuple(sorted(set(values)))


def kind_list(text: str) -> tuple[str, ...]:
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [kind for kind in kinds if kind not in STATE_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(STATE_KINDS)}, got {text!r}")
    return kinds


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("bench", help="compare the lock-free, lock-based and file state managers")
    parser.add_argument("--workers", type=count_list, default=(1, 2, 4, 8), metavar="N,...",
                        help="process / worker counts (default: 1,2,4,8)")
    parser.add_argument("--quick", action="store_true", help="short windows and small runs (the CI setting)")
    parser.add_argument("--state", type=kind_list, default=STATE_KINDS, metavar="KIND,...",
                        help=f"implementations to compare (default: {','.join(STATE_KINDS)})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (the table goes to stderr)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless lockfree/locked updates/s at the highest count is at least --min-ratio")
    parser.add_argument("--min-ratio", type=positive_float, metavar="R", help="the threshold of --check")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw throughput against workers per state implementation (needs matplotlib)")
    parser.add_argument("--from-json", metavar="FILE",
                        help="with --plot: draw a report saved by --json instead of measuring again")
    parser.add_argument("--log-level", default="WARNING", metavar="LEVEL", help="log level (default: WARNING)")
    parser.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the comparison, print it, and apply ``--check``; returns the exit code."""
    if args.check and args.min_ratio is None:
        raise ConfigurationError("--check needs --min-ratio R")
    if args.check and not {"lockfree", bench.BASELINE} <= set(args.state):
        raise ConfigurationError(f"--check compares lockfree with {bench.BASELINE}: include both in --state")
    configure_logging(args.log_level.upper())
    if args.from_json:
        if not args.plot:
            raise ConfigurationError("--from-json only redraws a chart: give --plot FILE.png")
        with open(args.from_json, encoding="utf-8") as handle:
            plot_report(json.load(handle), args.plot)
        say(f"chart written to {args.plot}")
        return EXIT_OK
    plan = bench.Plan.build(args.state, args.workers, quick=args.quick)
    report = bench.compare(plan, progress=say)
    table = bench.render(report)
    if args.plot:
        plot_report(report, args.plot)
        say(f"chart written to {args.plot}")
    verdict = None
    if args.check:
        ok, message = bench.check(report, args.min_ratio)
        report["check"] = {"ok": ok, "min_ratio": args.min_ratio, "message": message}
        verdict = ok
    if args.json:
        say(table)
        print(json.dumps(report, indent=2))
    else:
        print(table, flush=True)
    if verdict is not None:
        say(report["check"]["message"])
        return EXIT_OK if verdict else EXIT_FAILURE
    return EXIT_OK
