"""Where the time goes on the hot path, and the figures issue 8 targets.

    python benchmarks/hot_path.py [--tasks 40000] [--repeat 3] [--json]

Measures, on the embedded server:
* end-to-end no-op throughput with 2 workers (median of --repeat runs, results not stored);
* worker round trips and Redis commands per task (INFO commandstats deltas);
* microseconds of Python per task: one worker driven in this process (cProfile off),
  split into time waiting on the server and the rest;
* enqueue-to-start latency (queue wait, p50/p99) at a paced 1,000 tasks/s;
* cold start: creating the orchestrator (fresh database) to the first result;
* worker RSS after a run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import psutil
import redis

from orchestrator_mp import ContinuousOrchestrator, Settings, keys, task
from orchestrator_mp.models import Task
from orchestrator_mp.server import EmbeddedServer
from orchestrator_mp.state import create_state_manager
from orchestrator_mp.worker import Worker


@task(name="bench.noop")
def noop(x):
    return x


def _settings(directory: str, name: str, **fields) -> Settings:
    return Settings(db_path=os.path.join(directory, name), log_level="WARNING", **fields)


def throughput(directory: str, tasks: int, repeat: int) -> dict:
    rates, round_trips, commands = [], [], []
    for attempt in range(repeat):
        with ContinuousOrchestrator(settings=_settings(directory, f"tp{attempt}.db", workers=2)) as orch:
            client = redis.Redis.from_url(orch.url, decode_responses=True)
            orch.submit_many("bench.noop", [(0,)], results=False)
            orch.wait(30)
            client.config_resetstat()
            started = time.perf_counter()
            for first in range(0, tasks, 10_000):
                orch.submit_many("bench.noop", [(i,) for i in range(first, min(tasks, first + 10_000))], results=False)
            assert orch.wait(300)
            rates.append(tasks / (time.perf_counter() - started))
            stats = {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}
            worker_calls = stats.get("evalsha", 0) + stats.get("blmove", 0) + stats.get("zrange", 0)
            round_trips.append(worker_calls / tasks)
            commands.append(sum(stats.values()) / tasks)
            assert orch.audit()["ok"]
            client.close()
    return {
        "tasks_per_s_median": round(statistics.median(rates)),
        "tasks_per_s_runs": [round(r) for r in rates],
        "worker_round_trips_per_task": round(statistics.median(round_trips), 4),
        "redis_commands_per_task": round(statistics.median(commands), 2),
    }


def python_cost(directory: str, tasks: int) -> dict:
    settings = _settings(directory, "py.db", workers=1)
    with EmbeddedServer(settings.db_path) as server:
        state = create_state_manager(settings, server.url, fail_fast=True)
        worker = Worker(state, "bench-worker", settings, heartbeat=False)
        worker.register()
        state.submit([Task(name="bench.noop", args=(i,)).to_json() for i in range(tasks)])
        client = state.redis
        waited = 0.0
        original = client.execute_command

        def timed(*args, **kwargs):
            nonlocal waited
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                waited += time.perf_counter() - began

        client.execute_command = timed
        started = time.perf_counter()
        while worker.run_batch(block=False):
            pass
        elapsed = time.perf_counter() - started
        client.execute_command = original
        state.close()
    return {
        "us_per_task": round(elapsed / tasks * 1e6, 1),
        "us_waiting_on_redis": round(waited / tasks * 1e6, 1),
        "us_python": round((elapsed - waited) / tasks * 1e6, 1),
        "one_worker_tasks_per_s": round(tasks / elapsed),
    }


def latency(directory: str, rate: int = 1000, seconds: float = 3.0) -> dict:
    with ContinuousOrchestrator(settings=_settings(directory, "lat.db", workers=2)) as orch:
        total = int(rate * seconds)
        started = time.perf_counter()
        for i in range(total):
            due = started + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            orch.submit_many("bench.noop", [(i,)], results=False)
        assert orch.wait(60)
        waits = sorted(float(f["wait_ms"]) for _, f in orch.state.read_stream(keys.WORK_COMPLETIONS, count=total))
    return {
        "rate_per_s": rate,
        "queue_wait_p50_ms": round(statistics.median(waits), 2),
        "queue_wait_p99_ms": round(waits[int(0.99 * (len(waits) - 1))], 2),
        "queue_wait_max_ms": round(waits[-1], 2),
    }


def cold_start(directory: str) -> dict:
    times = []
    for attempt in range(3):
        began = time.perf_counter()
        with ContinuousOrchestrator(settings=_settings(directory, f"cold{attempt}.db", workers=2)) as orch:
            orch.submit("bench.noop", 1).result(timeout=30)
            times.append(time.perf_counter() - began)
    return {"cold_start_to_first_result_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times]}


def worker_rss(directory: str, tasks: int) -> dict:
    with ContinuousOrchestrator(settings=_settings(directory, "rss.db", workers=2)) as orch:
        orch.submit_many("bench.noop", [(i,) for i in range(tasks)], results=False)
        assert orch.wait(300)
        rss = [psutil.Process(pid).memory_info().rss / 2**20 for pid in orch.supervisor.pids().values()]
    return {"worker_rss_mb_max": round(max(rss), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="orchestrator_mp-hotpath-")
    report = {
        "throughput_2_workers": throughput(directory, args.tasks, args.repeat),
        "python_per_task": python_cost(directory, min(args.tasks, 50_000)),
        "latency_at_1000_per_s": latency(directory),
        "cold_start": cold_start(directory),
        "rss": worker_rss(directory, min(args.tasks, 20_000)),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for section, values in report.items():
            print(f"{section}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
