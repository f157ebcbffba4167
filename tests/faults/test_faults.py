"""Fault injection with real processes: SIGKILL workers and the server, SIGSTOP a
worker past its lease, SIGKILL the parent. Each test prints its figures."""
from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import threading
import time

import psutil
import pytest

from orchestrator_mp import ContinuousOrchestrator, keys
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks before workers fork)
from tests.helpers import (
    CLI,
    LineReader,
    run_cli_json,
    settings_for,
    sigkill_worker,
    wait_for,
    wait_gone,
)

pytestmark = pytest.mark.slow


def _completion_ids(orch):
    entries = orch.state.read_stream(keys.WORK_COMPLETIONS, count=1_000_000)
    return [fields["task_id"] for _, fields in entries]


def _reclaim_times(orch):
    """worker id -> time (s) of its first takeover, from stream:worker_events ids."""
    times = {}
    for entry_id, fields in orch.state.read_stream(keys.WORKER_EVENTS, count=100_000):
        if fields.get("event") == "reclaimed" and fields["worker"] not in times:
            times[fields["worker"]] = int(entry_id.split("-")[0]) / 1000.0
    return times


@pytest.mark.parametrize("shards", [None, 3], ids=["plain", "sharded"])
def test_random_worker_kills_and_a_server_kill_lose_nothing(db_path, shards):
    """5,000 tasks, 4 workers, a worker SIGKILLed every ~200 ms and the server once
    (on the plain layout, and on the 3-shard layout a cluster gets)."""
    submitted = 5000
    settings = settings_for(db_path, workers=4, durability="strict", batch_size=8, shards=shards)
    kills: list[tuple[str, float]] = []
    server_kills = []
    with ContinuousOrchestrator(settings=settings) as orch:
        orch.submit_many("tests.sleep", [(2,) for _ in range(submitted)])
        done = threading.Event()

        def chaos():
            rng = random.Random(7)
            while not done.is_set() and len(kills) < 40:
                time.sleep(0.2)
                pids = orch.supervisor.pids()
                if not pids:
                    continue
                worker_id = rng.choice(sorted(pids))
                try:
                    sigkill_worker(pids[worker_id])
                except ProcessLookupError:
                    continue
                kills.append((worker_id, time.time()))
                if len(kills) == 6 and not server_kills:
                    server_kills.append(orch.server.pid)
                    os.kill(orch.server.pid, signal.SIGKILL)

        killer = threading.Thread(target=chaos)
        killer.start()
        try:
            wait_for(lambda: len(kills) >= 10, timeout=60, what="ten kills")
            assert orch.wait(timeout=180), "the run did not drain"
        finally:
            done.set()
            killer.join()
        audit = orch.audit()
        counters = orch.counters()
        ids = _completion_ids(orch)
        reclaimed_at = _reclaim_times(orch)
        restarts = orch.server.restarts
    delays = [reclaimed_at[w] - t for w, t in kills if w in reclaimed_at]
    dead = counters["total_dead_lettered"]
    lost = submitted - counters["total_work_completed"] - dead
    duplicates_counted = len(ids) - len(set(ids))
    print(
        f"\n{'sharded' if shards else 'plain'}: kills survived: {len(kills)} workers + {len(server_kills)} server (restarts {restarts}); "
        f"recovery delay p50 {statistics.median(delays) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms "
        f"over {len(delays)} kills; tasks lost: {lost}; duplicates counted: {duplicates_counted}; "
        f"re-runs absorbed: {counters['total_duplicates']}; requeued: {counters['total_requeued']}; "
        f"dead-lettered: {dead}"
    )
    assert len(kills) >= 10 and restarts == 1
    assert lost == 0
    assert duplicates_counted == 0 and len(ids) == counters["total_work_completed"]
    assert counters["total_work_created"] == submitted
    assert audit["ok"], audit
    assert len(delays) >= 10 and max(delays) <= 2.0, delays


def test_paused_worker_past_its_lease_is_fenced_when_it_resumes(db_path):
    """SIGSTOP a worker past its lease: it is declared dead, replaced, and after SIGCONT
    its late writes are rejected and counted as fenced, not as completions."""
    settings = settings_for(db_path, workers=2, lease_s=1.0, heartbeat_interval_s=0.2, batch_size=4)
    with ContinuousOrchestrator(settings=settings) as orch:
        orch.submit_many("tests.sleep", [(50,) for _ in range(200)])
        wait_for(lambda: orch.counters()["total_work_completed"] >= 10, what="progress")
        worker_id, pid = sorted(orch.supervisor.pids().items())[0]
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.time()
        try:
            wait_for(lambda: worker_id in _reclaim_times(orch), timeout=10, what="the lease to lapse")
            declared_dead_after = _reclaim_times(orch)[worker_id] - stopped_at
            # The reclaim event lands before the supervisor marks the worker retired (the
            # step returns, then it takes its lock): wait for that, do not race it.
            wait_for(lambda: worker_id not in orch.supervisor.live_ids(), timeout=5, what="the worker to be retired")
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: worker_id in orch.supervisor.exit_codes, timeout=10, what="the zombie to exit")
        exit_code = orch.supervisor.exit_codes[worker_id]
        assert orch.wait(timeout=60)
        counters = orch.counters()
        ids = _completion_ids(orch)
        audit = orch.audit()
        reason = [f for _, f in orch.state.read_stream(keys.WORKER_EVENTS, count=1000)
                  if f.get("event") == "reclaimed" and f["worker"] == worker_id][0]["reason"]
    print(
        f"\nzombie {worker_id}: declared dead {declared_dead_after * 1000:.0f} ms after SIGSTOP "
        f"(lease 1000 ms); late writes fenced: {counters['total_fenced']}; exit code {exit_code}; "
        f"completed {counters['total_work_completed']}/200; duplicates counted: {len(ids) - len(set(ids))}"
    )
    assert reason == "lease_expired"
    assert counters["total_fenced"] >= 1
    assert exit_code == 3  # EXIT_FENCED
    assert counters["total_work_completed"] == 200 and len(set(ids)) == 200 == len(ids)
    assert audit["ok"], audit


def test_strict_durability_loses_no_acknowledged_write_when_the_server_is_killed(db_path):
    """appendfsync always: every acknowledged submission and completion survives SIGKILL."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=2, durability="strict")) as orch:
        orch.submit_many("tests.sleep", [(1,) for _ in range(1500)])
        wait_for(lambda: orch.counters()["total_work_completed"] >= 300, what="progress")
        acknowledged = orch.counters()
        os.kill(orch.server.pid, signal.SIGKILL)
        wait_for(lambda: orch.server.restarts == 1 and orch.server.is_alive(), what="the restart")
        after = orch.counters()
        assert orch.wait(timeout=120)
        final = orch.counters()
        audit = orch.audit()
    print(
        f"\nserver SIGKILLed at {acknowledged['total_work_completed']} acknowledged completions; "
        f"after restart {after['total_work_completed']}; submissions kept {after['total_work_created']}/1500; "
        f"final {final['total_work_completed']}"
    )
    assert after["total_work_created"] == 1500
    assert after["total_work_completed"] >= acknowledged["total_work_completed"]
    assert final["total_work_completed"] == 1500
    assert audit["ok"], audit


def test_parent_sigkill_leaves_no_orphans_and_a_restart_finishes(tmp_path):
    """Killing the parent ends its workers and server within a second or two; the next
    start on the same database reclaims their in-flight work and completes it."""
    env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([*CLI, "run", "--workers", "2", "--demo", "3000", "--demo-ms", "2"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    err = LineReader(proc.stderr)
    try:
        err.wait_for(lambda line: line.startswith("progress:"), what="progress")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # two workers and redis-server
        proc.send_signal(signal.SIGKILL)
        orphans_gone_after, alive = wait_gone(children, timeout=10)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not alive, f"orphans: {[p.pid for p in alive]}"
    report = run_cli_json("run", "--workers", "2", "--demo", "0", cwd=tmp_path)
    print(
        f"\nparent SIGKILLed: {len(children)} children gone after {orphans_gone_after * 1000:.0f} ms; "
        f"restart completed {report['total_work_completed']}/3000, requeued {report['counters']['total_requeued']}, "
        f"consistent {report['consistent']}"
    )
    assert orphans_gone_after < 1.0
    assert report["total_work_created"] == 3000 and report["total_work_completed"] == 3000
    assert report["consistent"] is True
