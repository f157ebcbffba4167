"""Soak: does a long-lived database stay bounded? (issue 13 §2)

    python -m benchmarks.soak [--tasks 1000000] [--workers 2] [--kills 20] [--json FILE] [--plot FILE]

One embedded run serves ``--tasks`` no-op demo tasks, submitted in chunks as the queue
drains (so the queue itself stays shallow), while a worker is SIGKILLed every
``tasks / (kills + 1)`` completions (the supervisor reclaims and replaces it). Every
``--sample-s`` seconds, and at every 100,000 completions, it records Redis
``used_memory``, the number of keys, ``known_workers``, and how long one sweep of dead
partitions takes (the supervisor runs it every second). Retention is shortened so the
soak sees it work: completions and errors streams capped at ``--stream-cap`` entries,
the event streams at ``--events-cap``, finished partitions retired after
``--retire-after`` seconds (submission markers keep their 5 minutes: a soak of a few
minutes holds all of them, about 100 bytes per 10,000-task submission).

Bounded means: memory at the end is within 10% of memory after the first 100,000
tasks, and the sweep takes as long at the end as early on. The caps are set so both
streams are full (retention at work) by then: about one event per claimed batch, one
completion entry per task. ``used_memory_dataset`` (what the keys hold) is reported
beside ``used_memory`` (which also counts client buffers and allocator overhead). The figures and a plot go to ``benchmarks/results/soak.{json,png}``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from typing import Any

from orchestrator_mp import ContinuousOrchestrator, Settings, keys
from orchestrator_mp.demo import register_demo
from orchestrator_mp.log import configure as configure_logging
from orchestrator_mp.recovery import sweep_dead_partitions

CHUNK = 10_000
MILESTONE = 100_000


def _sweep_ms(orch: ContinuousOrchestrator) -> float:
    """The fastest of three sweeps (the machine is shared: the minimum is the cost)."""
    times = []
    for _ in range(3):
        began = time.perf_counter()
        sweep_dead_partitions(orch.state, orch.settings, orch.supervisor.live_ids())
        times.append((time.perf_counter() - began) * 1000.0)
    return min(times)


def _sample(orch: ContinuousOrchestrator, started: float, drained: bool = False) -> dict[str, Any]:
    client = orch.state.redis
    memory = client.info("memory")
    sweep_ms = _sweep_ms(orch)
    counters = orch.counters()
    return {
        "drained": drained,
        "t_s": round(time.monotonic() - started, 2),
        "completed": counters[keys.TOTAL_WORK_COMPLETED],
        **{name: int(memory[name]) for name in ("used_memory", "used_memory_dataset", "used_memory_overhead")},
        "keys": int(client.dbsize()),
        "known_workers": len(orch.state.known_workers()),
        "retired": counters[keys.TOTAL_RETIRED],
        "sweep_ms": round(sweep_ms, 3),
    }


def soak(
    tasks: int, workers: int, kills: int, sample_s: float, stream_cap: int, events_cap: int, retire_after_s: float
) -> dict[str, Any]:
    """Run the soak; returns its samples and verdict."""
    demo = register_demo()
    with tempfile.TemporaryDirectory(prefix="soak-") as directory:
        settings = Settings(
            db_path=os.path.join(directory, "soak.db"), workers=workers, log_level="WARNING",
            completions_maxlen=stream_cap, events_maxlen=events_cap, retire_after_s=retire_after_s,
        )
        samples: list[dict[str, Any]] = []
        kill_every = tasks // (kills + 1)
        killed = 0
        with ContinuousOrchestrator(settings=settings) as orch:
            started = time.monotonic()
            submitted = 0
            next_sample = time.monotonic()
            next_milestone = MILESTONE
            samples.append(_sample(orch, started))
            while True:
                completed = orch.counters()[keys.TOTAL_WORK_COMPLETED]
                pending = orch.state.queue_depths([])["pending"]
                while submitted < min(tasks, next_milestone) and pending < 2 * CHUNK:
                    count = min(CHUNK, tasks - submitted, next_milestone - submitted)
                    orch.submit_many(demo, [(i,) for i in range(submitted, submitted + count)], results=False)
                    submitted += count
                    pending += count
                if killed < kills and completed >= (killed + 1) * kill_every:
                    pids = orch.supervisor.pids()
                    if pids:
                        os.kill(sorted(pids.values())[0], signal.SIGKILL)
                        killed += 1
                if submitted >= next_milestone:
                    # A milestone: let the queue drain, then measure what the database
                    # holds with no work in it (comparable from one milestone to the next).
                    assert orch.wait(timeout=600)
                    samples.append(_sample(orch, started, drained=True))
                    next_milestone += MILESTONE
                    continue
                if time.monotonic() >= next_sample:
                    samples.append(_sample(orch, started))
                    next_sample = time.monotonic() + sample_s
                if completed + orch.counters()[keys.TOTAL_DEAD_LETTERED] >= tasks:
                    break
                time.sleep(0.05)
            assert orch.wait(timeout=600)
            samples.append(_sample(orch, started, drained=True))
            audit = orch.audit()
            elapsed = time.monotonic() - started
    drained = [s for s in samples if s["drained"]]
    reference, final = drained[0], drained[-1]
    growth = final["used_memory"] / reference["used_memory"] - 1.0
    dataset_growth = final["used_memory_dataset"] / reference["used_memory_dataset"] - 1.0
    early_sweeps = [s["sweep_ms"] for s in samples[: max(2, len(samples) // 4)]]
    late_sweeps = [s["sweep_ms"] for s in samples[-max(2, len(samples) // 4) :]]
    return {
        "tasks": tasks,
        "workers": workers,
        "kills": killed,
        "elapsed_s": round(elapsed, 1),
        "stream_cap": stream_cap,
        "events_cap": events_cap,
        "retire_after_s": retire_after_s,
        "memory_at_100k": reference["used_memory"],
        "memory_at_end": final["used_memory"],
        "memory_growth": round(growth, 4),
        "dataset_at_100k": reference["used_memory_dataset"],
        "dataset_at_end": final["used_memory_dataset"],
        "dataset_growth": round(dataset_growth, 4),
        "sweep_ms_early_median": sorted(early_sweeps)[len(early_sweeps) // 2],
        "sweep_ms_late_median": sorted(late_sweeps)[len(late_sweeps) // 2],
        "audit_ok": audit["ok"],
        "bounded": abs(growth) <= 0.10 and audit["ok"],
        "samples": samples,
    }


def plot(report: dict[str, Any], path: str) -> None:
    """Memory and known partitions against completed tasks."""
    import matplotlib  # noqa: PLC0415  (optional: only when a plot is asked for)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    samples = report["samples"]
    done = [s["completed"] / 1000 for s in samples]
    figure, memory_axis = plt.subplots(figsize=(8, 4))
    memory_axis.plot(done, [s["used_memory"] / 2**20 for s in samples], marker=".", label="Redis used_memory (MiB)")
    drained = [s for s in samples if s["drained"]]
    memory_axis.plot([s["completed"] / 1000 for s in drained], [s["used_memory"] / 2**20 for s in drained], "o",
                     color="tab:green", label="drained (every 100k)")
    memory_axis.set_xlabel("tasks completed (thousands)")
    memory_axis.set_ylabel("MiB")
    partitions = memory_axis.twinx()
    partitions.plot(done, [s["known_workers"] for s in samples], color="tab:orange", label="known partitions")
    partitions.set_ylabel("known partitions")
    memory_axis.set_title(
        f"soak: {report['tasks']:,} tasks, {report['kills']} worker kills, growth {report['memory_growth']:+.1%}"
    )
    figure.legend(loc="upper left", bbox_to_anchor=(0.08, 0.9))
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--stream-cap", type=int, default=50_000)
    parser.add_argument("--events-cap", type=int, default=500)
    parser.add_argument("--retire-after", type=float, default=5.0)
    parser.add_argument("--json", default="benchmarks/results/soak.json")
    parser.add_argument("--plot", default="benchmarks/results/soak.png")
    args = parser.parse_args(argv)
    configure_logging("WARNING")  # a program of ours: our log lines, warnings and up
    report = soak(
        args.tasks, args.workers, args.kills, args.sample_s, args.stream_cap, args.events_cap, args.retire_after
    )
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    if args.plot:
        plot(report, args.plot)
    print(
        f"{report['tasks']:,} tasks, {report['kills']} kills, {report['elapsed_s']} s: used_memory "
        f"{report['memory_at_100k'] / 2**20:.1f} MiB after 100k -> {report['memory_at_end'] / 2**20:.1f} MiB at the end "
        f"({report['memory_growth']:+.1%}; dataset {report['dataset_growth']:+.1%}); sweep {report['sweep_ms_early_median']} ms early, "
        f"{report['sweep_ms_late_median']} ms late; audit {'ok' if report['audit_ok'] else 'FAILED'}"
    )
    return 0 if report["bounded"] else 1


if __name__ == "__main__":
    sys.exit(main())
