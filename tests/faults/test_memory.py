"""A full or evicting Redis never stalls the system for good nor loses data (issue 13, hole 4).

* The embedded server never evicts (``maxmemory-policy noeviction``, also after a restart).
* A server that may evict keys is refused at start, in one line, unless the caller
  accepts the risk (``allow_eviction`` / ``--allow-eviction``), which is warned loudly.
* Out of memory is back-pressure: ``submit`` raises BackendFull (nothing queued),
  workers wait and resend, keep their leases, and the run resumes once memory is freed.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import redis

from orchestrator_mp import (
    BackendFull,
    ConfigurationError,
    ContinuousOrchestrator,
    keys,
)
from orchestrator_mp.connection import create_client, eviction_policies
from orchestrator_mp.models import Task
from orchestrator_mp.state import create_state_manager
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks before workers fork)
from tests.cluster import local_cluster, local_server
from tests.contract import ok
from tests.helpers import library_logs, run_cli, settings_for, wait_for


def _admin(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def _reclaims(orch) -> list[dict]:
    return [fields for _, fields in orch.state.read_stream(keys.WORKER_EVENTS, count=100_000)
            if fields.get("event") == "reclaimed"]


@pytest.fixture
def external(tmp_path):
    """One standalone loopback server (not ours: its policy is whatever the test sets)."""
    with local_server(tmp_path / "redis") as server:
        yield server


# -- the policy -----------------------------------------------------------------------------------
def test_the_embedded_server_never_evicts_even_after_a_restart(server):
    """The embedded server runs with maxmemory-policy noeviction, written again on restart."""
    client = _admin(server.url)
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    client.close()
    os.kill(server.pid, signal.SIGKILL)
    server.process.wait()
    server.restart()
    client = _admin(server.url)
    try:
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        client.close()


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru"])
def test_an_evicting_server_is_refused_in_one_line_unless_allowed(external, db_path, policy):
    """A server that may evict keys is refused at start (ConfigurationError naming the policy
    and the fix, nothing written); allow_eviction starts anyway, with a loud warning."""
    admin = _admin(external.url)
    admin.config_set("maxmemory-policy", policy)
    settings = settings_for(db_path, redis_url=external.url, workers=1)
    orch = ContinuousOrchestrator(settings=settings)
    try:
        with pytest.raises(ConfigurationError) as refused:
            orch.start()
    finally:
        orch.close()
    message = str(refused.value)
    assert "\n" not in message
    assert f"maxmemory-policy {policy}" in message
    assert "CONFIG SET maxmemory-policy noeviction" in message and "--allow-eviction" in message
    assert admin.dbsize() == 0, "a refused start wrote to the server"
    with library_logs("WARNING") as warnings:
        with ContinuousOrchestrator(settings=settings.evolve(allow_eviction=True)) as orch:
            orch.submit("tests.add", 1, 2)
            assert orch.wait(timeout=30)
    assert any("UNSAFE" in line and policy in line for line in warnings), warnings
    admin.close()


def test_a_policy_hidden_from_config_get_is_read_from_info(external):
    """A user without CONFIG (as on managed services) gets the policy from INFO memory."""
    admin = _admin(external.url)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    admin.acl_setuser("app", enabled=True, passwords=["+apppw"], keys=["*"], commands=["+@all", "-config"])
    client = redis.Redis(host="127.0.0.1", port=external.ports[0], username="app", password="apppw",
                         decode_responses=True)
    try:
        with pytest.raises(redis.ResponseError):
            client.config_get("maxmemory-policy")
        assert eviction_policies(client) == {"": "allkeys-lru"}
    finally:
        client.close()
        admin.close()


@pytest.mark.slow
def test_the_cli_refuses_an_evicting_server_with_exit_code_2(external, tmp_path):
    """`run` and `enqueue` on an evicting --redis-url stop with one line and EXIT_CONFIG (2);
    `run --allow-eviction` runs, warning on stderr; `status` (a reader) only warns."""
    _admin(external.url).config_set("maxmemory-policy", "volatile-lru")
    run = run_cli("run", "--redis-url", external.url, "--workers", "1", "--demo", "20", cwd=tmp_path)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr
    assert len(lines) == 1 and "maxmemory-policy volatile-lru" in lines[0] and "noeviction" in lines[0], lines
    enqueue = run_cli("enqueue", "tests.add", "--args", "[1, 2]", "--redis-url", external.url, cwd=tmp_path)
    assert enqueue.returncode == 2 and "maxmemory-policy volatile-lru" in enqueue.stderr, enqueue.stderr
    allowed = run_cli("run", "--redis-url", external.url, "--workers", "1", "--demo", "20", "--allow-eviction",
                      "--json", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    assert "UNSAFE" in allowed.stderr and "volatile-lru" in allowed.stderr
    status = run_cli("status", "--redis-url", external.url, cwd=tmp_path)
    assert status.returncode == 0 and "volatile-lru" in status.stderr, status.stderr


@pytest.mark.slow
def test_every_master_of_a_cluster_is_checked(tmp_path, db_path):
    """On a cluster the policy of every master is read; one evicting master refuses the start."""
    with local_cluster(tmp_path / "cluster") as cluster:
        bad = cluster.ports[2]
        client = cluster.node_client(bad)
        client.config_set("maxmemory-policy", "allkeys-random")
        client.close()
        client = create_client(cluster.url)
        try:
            policies = eviction_policies(client)
        finally:
            client.close()
        assert sorted(policies.values()) == ["allkeys-random", "noeviction", "noeviction"]
        orch = ContinuousOrchestrator(settings=settings_for(db_path, redis_url=cluster.url, workers=1))
        try:
            with pytest.raises(ConfigurationError, match=rf"127\.0\.0\.1:{bad} allkeys-random"):
                orch.start()
        finally:
            orch.close()


# -- out of memory, step by step ------------------------------------------------------------------
@pytest.mark.parametrize("shards", [None, 2], ids=["plain", "sharded"])
def test_each_step_on_a_full_server(server, settings, shards):
    """At maxmemory: submit, register, a state update and a blocking claim are refused as
    BackendFull with nothing written; heartbeats (leases renewed), claims, settles, hand-backs,
    takeovers, promotions, the audit and result waits go through."""
    state = create_state_manager(settings.evolve(shards=shards), server.url, fail_fast=True)
    admin = _admin(server.url)
    try:
        raws = [Task(name="tests.add", args=(i, i), want_result=True).to_json() for i in range(12)]
        state.submit(raws)
        epoch = state.register_worker("w1", pid=1, host="h")
        first = state.claim("w1", epoch, 4)
        leases = [space.worker_lease_key("w1") for space in getattr(state, "spaces", [keys.PLAIN])]
        admin.config_set("maxmemory", 1)
        before = state.get_counters()

        with pytest.raises(BackendFull, match=r"Redis is full \(used [\d.,]+ \w+ of maxmemory 1 bytes\)"):
            state.submit([Task(name="tests.add", args=(0, 0)).to_json()])
        assert state.get_counters()[keys.TOTAL_WORK_CREATED] == before[keys.TOTAL_WORK_CREATED]
        with pytest.raises(BackendFull):
            state.register_worker("w2", pid=2, host="h")
        assert "w2" not in state.known_workers()
        with pytest.raises(BackendFull):
            state.update_worker_state("w1", {"deadline": time.time() + 60}, epoch=epoch)

        for lease in leases:
            admin.pexpire(lease, 50)
        state.heartbeat("w1", epoch)  # renewed, not refused: a waiting worker keeps its lease
        assert all(admin.pttl(lease) > 1000 for lease in leases)
        assert state.expired_workers() == []
        assert state.settle("w1", epoch, [ok(raw, "2") for raw in first]).completed == 4
        second = state.claim("w1", epoch, 16)
        assert len(second) == 8
        assert state.release("w1", epoch, second[4:]) == 4
        assert state.audit()["ok"]
        assert state.wait_result(Task.from_json(first[0]).id, 1.0)["status"] == "done"
        assert state.wait_result("no-such-task", 0.1) is None
        taken = state.reclaim("w1", max_crashes=3, crashed=False)
        assert taken is not None and taken.requeued == 4
        with pytest.raises(BackendFull):
            state.register_worker("w3", pid=3, host="h")

        admin.config_set("maxmemory", 0)
        epoch3 = state.register_worker("w3", pid=3, host="h")
        drained = state.claim("w3", epoch3, 16)
        assert len(drained) == 8
        admin.config_set("maxmemory", 1)
        if shards is None:
            with pytest.raises(BackendFull):  # an empty queue: the blocking move is refused
                state.wait_claim("w3", epoch3, 16, 1, 0.05)
        else:  # idle workers of a sharded layout block on the doorbell, a read
            assert state.wait_claim("w3", epoch3, 16, 1, 0.05) == []
        assert state.settle("w3", epoch3, [ok(raw) for raw in drained]).completed == 8
        admin.config_set("maxmemory", 0)
        audit = state.audit()
        assert audit["ok"], audit
        counters = state.get_counters()
        assert counters[keys.TOTAL_WORK_COMPLETED] == 12 and counters[keys.TOTAL_DUPLICATES] == 0
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
        state.close()


# -- a run ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_on_a_full_server_stalls_without_deaths_and_resumes_when_memory_frees(db_path):
    """maxmemory set just above the used memory mid-run: submissions soon fail with BackendFull,
    and while the server is held full the workers wait (a time-limited task cannot publish its deadline), keep their leases through
    three lease periods, and once `CONFIG SET maxmemory 0` frees room every task completes
    exactly once: no worker death, no takeover, no crash charged, the audit exact.
    (Before: workers crashed on a plain ResponseError, replacements died at registration and
    the supervisor gave up on a crash loop.)"""
    total, chunk, held_s = 3000, 100, 3.0
    settings = settings_for(db_path, workers=2, lease_s=1.0, heartbeat_interval_s=0.25)
    with ContinuousOrchestrator(settings=settings) as orch:
        admin = _admin(orch.url)

        def submit(count):
            orch.submit_raw("tests.sleep", [(1,)] * count, time_limit_s=60)

        submit(500)
        wait_for(lambda: orch.counters()[keys.TOTAL_WORK_COMPLETED] >= 100, timeout=30, what="progress")
        pids = dict(orch.supervisor.pids())
        epochs = {w: orch.state.get_worker_state(w)["epoch"] for w in pids}
        admin.config_set("maxmemory", admin.info("memory")["used_memory"] + 256 * 1024)
        submitted, refusal = 500, None
        while refusal is None:
            try:
                submit(chunk)
                submitted += chunk
            except BackendFull as exc:
                refusal = exc
        full_at = time.monotonic()
        completed_at_full = orch.counters()[keys.TOTAL_WORK_COMPLETED]
        # Near the limit a later submission may fit again (a request's own buffer counts
        # while it is read); to hold the server full for three lease periods whatever is
        # freed meanwhile, the limit drops to 1 byte: every submission is refused, nobody dies.
        admin.config_set("maxmemory", 1)
        refused = 1
        while time.monotonic() - full_at < held_s:
            with pytest.raises(BackendFull):
                submit(chunk)
            refused += 1
            time.sleep(0.1)
        stalled = orch.counters()[keys.TOTAL_WORK_COMPLETED] - completed_at_full
        assert orch.state.expired_workers() == [], "a waiting worker's lease lapsed"
        assert orch.supervisor.pids() == pids and orch.supervisor.deaths == []
        admin.config_set("maxmemory", 0)
        freed_at = time.monotonic()
        wait_for(lambda: orch.counters()[keys.TOTAL_WORK_COMPLETED] > completed_at_full + stalled,
                 timeout=30, what="the workers to resume")
        resumed_s = time.monotonic() - freed_at
        stall_s = time.monotonic() - full_at
        submit(total - submitted)
        assert orch.wait(timeout=120), "the run did not drain after memory was freed"
        counters = orch.counters()
        audit = orch.audit()
        completions = [f["task_id"] for _, f in orch.state.read_stream(keys.WORK_COMPLETIONS, count=1_000_000)]
        reclaims = _reclaims(orch)
        deaths = list(orch.supervisor.deaths)
        expiries = orch.supervisor.lease_expiries
        after = {w: orch.state.get_worker_state(w)["epoch"] for w in pids}
        admin.close()
    print(f"\nfull server: {submitted} of {total} tasks queued when submit was first refused "
          f"({refused} refusals in {held_s:.0f} s held full, {stalled} completed meanwhile); "
          f"resumed {resumed_s * 1000:.0f} ms after maxmemory 0 (stalled {stall_s:.1f} s); deaths {len(deaths)}, takeovers {len(reclaims)}, "
          f"lease expiries {expiries}, fenced {counters['total_fenced']}, completed "
          f"{counters['total_work_completed']}/{total}\n  {refusal}")
    assert refusal.used_bytes and refusal.max_bytes and "Redis is full" in str(refusal)
    assert deaths == [] and reclaims == [] and expiries == 0 and counters["total_fenced"] == 0
    assert after == epochs
    assert counters[keys.TOTAL_WORK_COMPLETED] == total == len(completions) == len(set(completions))
    assert counters["total_duplicates"] == 0 and counters["total_dead_lettered"] == 0
    assert audit["ok"], audit


@pytest.mark.slow
def test_a_replacement_started_on_a_full_server_waits_to_register(db_path):
    """A worker killed while the server is full is taken over at once (the takeover moves
    tasks, which a full server allows); its replacement waits at registration instead of
    dying into a crash loop, and the idle survivor waits at its blocking claim; once memory
    is freed both serve new work."""
    settings = settings_for(db_path, workers=2, lease_s=1.0, heartbeat_interval_s=0.25)
    with ContinuousOrchestrator(settings=settings) as orch:
        admin = _admin(orch.url)
        orch.submit_many("tests.sleep", [(1,)] * 50)
        assert orch.wait(timeout=30)
        admin.config_set("maxmemory", 1)
        victim, survivor = sorted(orch.supervisor.pids().items())
        started = len(orch.supervisor.started_ids())
        os.kill(victim[1], signal.SIGKILL)
        wait_for(lambda: len(orch.supervisor.started_ids()) == started + 1, timeout=30, what="a replacement")
        replacement = orch.supervisor.started_ids()[-1]
        wait_for(lambda: any(f.get("worker") == victim[0] for f in _reclaims(orch)), timeout=10,
                 what="the takeover of the killed worker")
        time.sleep(2.0)  # two lease periods on a full server: the replacement waits, unregistered
        assert orch.state.get_worker_state(replacement) == {}
        assert orch.supervisor.failure is None and len(orch.supervisor.deaths) == 1
        assert orch.supervisor.pids()[survivor[0]] == survivor[1]
        admin.config_set("maxmemory", 0)
        wait_for(lambda: orch.state.get_worker_state(replacement).get("status") == "idle", timeout=30,
                 what="the replacement to register")
        handles = orch.submit_many("tests.add", [(i, i) for i in range(200)])
        assert [h.result(timeout=30) for h in handles] == [2 * i for i in range(200)]
        workers = orch.worker_counters()
        audit = orch.audit()
        failure = orch.supervisor.failure
        admin.close()
    assert failure is None
    assert workers[replacement]["completed"] > 0, workers
    assert audit["ok"], audit


def test_a_result_waiter_polls_while_the_server_is_full(server, settings):
    """`handle.result()` waits through a full server (which refuses its blocking read) and
    returns the result once it is stored."""
    state = create_state_manager(settings, server.url)
    admin = _admin(server.url)
    try:
        raw = Task(name="tests.add", args=(1, 2), want_result=True).to_json()
        state.submit([raw])
        epoch = state.register_worker("w1", pid=1, host="h")
        claimed = state.claim("w1", epoch, 1)
        admin.config_set("maxmemory", 1)
        task_id = Task.from_json(raw).id
        began = time.monotonic()
        assert state.wait_result(task_id, 0.3) is None  # polled (the blocking read is refused)
        assert time.monotonic() - began >= 0.3
        got: list = []
        waiter = threading.Thread(target=lambda: got.append(state.wait_result(task_id, 10)))
        waiter.start()
        state.settle("w1", epoch, [ok(claimed[0], "3")])
        waiter.join(timeout=10)
        assert got and got[0]["result"] == 3
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
        state.close()
