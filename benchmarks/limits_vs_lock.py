"""Lock-free rate limiting against the old way: a lock held around every call.

    python benchmarks/limits_vs_lock.py [--rate 50] [--calls 200] [--other 4000] [--workers 4]

4 workers share one rate-limited "endpoint" (a local call counter standing in for an
external API). At the same time they have plain, unlimited tasks to run. Two designs,
side by side in one run, on the same embedded server:

* lock-free: ``@task(rate_limit=...)``. Each decision is one Lua script (GCRA); a task
  over the rate is deferred to its slot in the delayed set and the worker moves on to
  other work.
* lock around the call (the design this project replaced): the task takes a redis-py
  Lock on the endpoint, waits (sleeping) until the spacing allows the call, calls,
  records the time, releases. A competent version: leased lock, tuned retry sleep.

Reported: achieved rate of endpoint calls against the configured one, throughput of
the unlimited tasks while limited calls were pending, and Redis commands per decision
(INFO commandstats deltas over the limited calls).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import redis

from orchestrator_mp import ContinuousOrchestrator, Settings, keys, task
from orchestrator_mp.limits import current_limits, limiter

RATE = int(os.environ.get("LIMITS_BENCH_RATE", "50"))
ENDPOINT = limiter("bench-endpoint", rate=f"{RATE}/s")


def _call_endpoint(log_path: str) -> float:
    """The fake external API: records when it was called."""
    at = time.time()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{at:.6f}\n".encode())
    finally:
        os.close(fd)
    return at


@task(name="bench.limited_lockfree", rate_limit=ENDPOINT)
def limited_lockfree(log_path: str) -> float:
    return _call_endpoint(log_path)


@task(name="bench.limited_locked")
def limited_locked(log_path: str) -> float:
    """The old way: hold a lock on the endpoint, keep calls 1/RATE apart inside it."""
    client = current_limits().redis
    lock = client.lock("lock:external:bench-endpoint", timeout=5, sleep=0.0005, blocking_timeout=60)
    with lock:
        last = float(client.get("bench:endpoint:last") or 0)
        wait = last + 1.0 / RATE - time.time()
        if wait > 0:
            time.sleep(wait)
        at = _call_endpoint(log_path)
        client.set("bench:endpoint:last", repr(at))
    return at


@task(name="bench.plain")
def plain(i: int) -> int:
    return i


def run(design: str, calls: int, other: int, workers: int, directory: str) -> dict:
    tag = f"{design.replace(' ', '-')}-{other}"
    log_path = os.path.join(directory, f"{tag}.calls")
    settings = Settings(db_path=os.path.join(directory, f"{tag}.db"), workers=workers, log_level="WARNING")
    name = "bench.limited_lockfree" if design == "lock-free" else "bench.limited_locked"
    with ContinuousOrchestrator(settings=settings) as orch:
        client = redis.Redis.from_url(orch.url, decode_responses=True)
        client.config_resetstat()
        started = time.time()
        orch.submit_many(name, [(log_path,)] * calls, results=False)
        if other:
            orch.submit_many("bench.plain", [(i,) for i in range(other)], results=False)
        assert orch.wait(timeout=600)
        stats = {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}
        completions = orch.state.read_stream(keys.WORK_COMPLETIONS, count=calls + other)
        client.close()
        assert orch.audit()["ok"]
    stamps = sorted(float(line) for line in open(log_path))
    achieved = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    plain_done = [int(entry_id.split("-")[0]) / 1000 for entry_id, f in completions if f["name"] == "bench.plain"]
    return {
        "design": design,
        "configured_per_s": RATE,
        "achieved_per_s": round(achieved, 2),
        "rate_error_pct": round(100 * (achieved - RATE) / RATE, 2),
        "plain_tasks_done_after_s": round(max(plain_done) - started, 2) if plain_done else None,
        "redis_commands_per_call": round(sum(stats.values()) / len(stamps), 1),
        "endpoint_calls": len(stamps),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--other", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="orchestrator_mp-limits-")
    rows = []
    for design in ("lock-free", "lock around the call"):
        mixed = run(design, args.calls, args.other, args.workers, directory)
        alone = run(design, args.calls, 0, args.workers, directory)  # for commands per call
        mixed["redis_commands_per_call"] = alone["redis_commands_per_call"]
        mixed["achieved_per_s_alone"] = alone["achieved_per_s"]
        rows.append(mixed)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.workers} workers, {args.calls} calls to a {RATE}/s endpoint, {args.other} unlimited tasks at the same time")
    print(f"{'design':<22} {'achieved/s':>10} {'error':>7} {'alone/s':>8} {'unlimited tasks done after':>27} {'Redis cmds/call':>16}")
    for row in rows:
        print(
            f"{row['design']:<22} {row['achieved_per_s']:>10} {row['rate_error_pct']:>6}% "
            f"{row['achieved_per_s_alone']:>8} {row['plain_tasks_done_after_s']:>26}s {row['redis_commands_per_call']:>16}"
        )
    lockfree, locked = rows
    print(
        f"unlimited tasks finished {locked['plain_tasks_done_after_s'] / max(0.01, lockfree['plain_tasks_done_after_s']):.1f}x "
        f"sooner lock-free; {locked['redis_commands_per_call'] / lockfree['redis_commands_per_call']:.1f}x fewer Redis commands per call"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
