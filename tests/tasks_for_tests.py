"""Tasks registered for the tests (imported by the test modules before workers fork)."""
from __future__ import annotations

import asyncio
import os
import time

from orchestrator_mp import task


@task(name="tests.add")
def add(a, b):
    return a + b


@task(name="tests.sleep")
def sleep_ms(ms):
    time.sleep(ms / 1000.0)
    return ms


@task(name="tests.fail")
def fail(message="boom"):
    raise ValueError(message)


@task(name="tests.crash_once")
def crash_once(marker_dir, key):
    """Kill the worker the first time this key runs; succeed afterwards."""
    marker = os.path.join(marker_dir, f"{key}.ran")
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return key


@task(name="tests.always_crash")
def always_crash():
    os._exit(1)


@task(name="tests.record")
def record(path, value):
    """Append value to a file: the test reads who ran what."""
    with open(path, "a") as handle:
        handle.write(f"{value}\n")


@task(name="tests.fail_times", max_retries=3)
def fail_times(marker_dir, key, times):
    """Fail the first ``times`` runs of this key, then succeed."""
    path = os.path.join(marker_dir, f"{key}.count")
    count = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as handle:
        handle.write(str(count + 1))
    if count < times:
        raise RuntimeError(f"attempt {count + 1} of {key} fails on purpose")
    return count


@task(name="tests.bad_result")
def bad_result():
    return object()


@task(name="tests.slow_limited", time_limit_s=0.5)
def slow_limited(seconds):
    time.sleep(seconds)
    return seconds


@task(name="tests.square")
def square(x):
    return x * x


@task(name="tests.echo_after")
def echo_after(value, ms):
    time.sleep(ms / 1000.0)
    return value


@task(name="tests.async_sleep")
async def async_sleep(value, ms):
    await asyncio.sleep(ms / 1000.0)
    return value


@task(name="tests.async_fail")
async def async_fail(message):
    await asyncio.sleep(0)
    raise KeyError(message)


@task(name="tests.async_slow_limited", time_limit_s=0.2)
async def async_slow_limited():
    await asyncio.sleep(5)


@task(name="tests.now")
def now():
    return time.time()


@task(name="tests.rate_limited", rate_limit="40/s")
def rate_limited(i):
    return time.time()


@task(name="tests.capped", concurrency=2)
def capped(marker_dir, ms):
    """Record how many calls hold the cap at once (a file per running call)."""
    mine = os.path.join(marker_dir, f"run-{os.getpid()}-{time.monotonic_ns()}")
    open(mine, "w").close()
    running = len([n for n in os.listdir(marker_dir) if n.startswith("run-")])
    with open(os.path.join(marker_dir, "max"), "a") as handle:
        handle.write(f"{running}\n")
    time.sleep(ms / 1000.0)
    os.unlink(mine)
    return running


@task(name="tests.capped_crash", concurrency=1)
def capped_crash(marker_dir, key):
    """Hold the single slot and die the first time; succeed afterwards."""
    marker = os.path.join(marker_dir, f"{key}.ran")
    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(0.2)
        os._exit(1)
    return key


@task(name="tests.ordered")
def ordered(path, key, seq, ms):
    """Record the start and end of each run (one O_APPEND line each: atomic)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"start {key} {seq} {time.time():.6f} {os.getpid()}\n".encode())
        time.sleep(ms / 1000.0)
        os.write(fd, f"end {key} {seq} {time.time():.6f} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return seq


@task(name="tests.rate_limited_10", rate_limit="10/s")
def rate_limited_10(i):
    return i


@task(name="tests.limited_sleep", time_limit_s=0.5)
def limited_sleep(seconds):
    time.sleep(seconds)
