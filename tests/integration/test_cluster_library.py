"""The library on a real 3-master Redis Cluster: results, per-key order, delays,
rate limits and caps, the Executor, and the baseline's clear refusal."""
from __future__ import annotations

import os
import time

import pytest

from orchestrator_mp import ContinuousOrchestrator, keys
from orchestrator_mp.exceptions import ConfigurationError
from orchestrator_mp.executor import OrchestratorExecutor
from tests import tasks_for_tests
from tests.cluster import local_cluster
from tests.helpers import settings_for

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster_url(tmp_path):
    with local_cluster(tmp_path / "cluster", password="pw-lib") as started:
        yield started.url


def test_results_order_delays_and_limits_on_a_cluster(cluster_url, db_path, tmp_path):
    settings = settings_for(db_path, workers=3, redis_url=cluster_url)
    with ContinuousOrchestrator(settings=settings) as orch:
        assert orch.submit("tests.add", 2, 3).result(timeout=10) == 5
        keyed = [orch.submit_with("tests.add", (i, 0), partition_key="account-7") for i in range(30)]
        assert [handle.result(timeout=10) for handle in keyed] == list(range(30))
        started = time.monotonic()
        assert orch.submit_with("tests.add", (1, 1), delay_s=0.5).result(timeout=10) == 2
        delayed_s = time.monotonic() - started
        limited = orch.submit_many("tests.rate_limited", [(i,) for i in range(40)])  # 40/s
        times = sorted(handle.result(timeout=30) for handle in limited)
        marker_dir = tmp_path / "capped"
        marker_dir.mkdir()
        capped = orch.submit_many("tests.capped", [(str(marker_dir), 50) for _ in range(12)])  # cap 2
        [handle.result(timeout=30) for handle in capped]
        most_at_once = max(int(line) for line in (marker_dir / "max").read_text().split())
        completions = orch.state.read_stream(keys.WORK_COMPLETIONS, count=10_000)
        audit = orch.audit()
    ids = {handle.id: i for i, handle in enumerate(keyed)}
    order = [ids[fields["task_id"]] for _, fields in completions if fields["task_id"] in ids]
    span = times[-1] - times[0]
    print(f"\ncluster: delay 0.5 s kept in {delayed_s:.3f} s; 40 tasks at 40/s over {span:.2f} s "
          f"({39 / span:.1f}/s); cap 2 held by at most {most_at_once}")
    assert order == list(range(30))  # one key: one shard, one lane, submission order
    assert 0.5 <= delayed_s < 1.5
    assert 39 / 40 * 0.9 <= span < 39 / 40 * 2  # the rate, kept whole in one shard (not split 3 ways)
    assert most_at_once <= 2  # the cap lives whole in one shard (its tasks carry its shard key)
    assert audit["ok"] and audit["shards"] == 3, audit["checks"]
    assert tasks_for_tests  # registered before the workers fork


def test_executor_and_the_baseline_on_a_cluster(cluster_url, db_path):
    settings = settings_for(db_path, workers=2, redis_url=cluster_url)
    with OrchestratorExecutor(settings=settings) as executor:
        assert list(executor.map(tasks_for_tests.square, range(500))) == [i * i for i in range(500)]
    with pytest.raises(ConfigurationError, match="one Redis server"):
        ContinuousOrchestrator(settings=settings.evolve(state="locked")).__enter__()
    assert not os.path.exists(db_path)  # nothing embedded was started
