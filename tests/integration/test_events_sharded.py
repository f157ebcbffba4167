"""The read side over a sharded layout (3 shards on one real server): every reader
sees every shard's copy of the streams, under the plain stream names."""
from __future__ import annotations

import json
import signal
import threading
import time

import pytest
from redis.cluster import RedisCluster

from orchestrator_mp import keys
from orchestrator_mp.connection import create_client
from orchestrator_mp.events import (
    ShardView,
    StreamFollower,
    client_of,
    id_order,
    server_time,
    views_of,
)
from orchestrator_mp.exceptions import ConfigurationError
from orchestrator_mp.figures import recent_latency, throughput
from orchestrator_mp.metrics import LatencyHistograms
from orchestrator_mp.models import Outcome, Task
from orchestrator_mp.state import create_state_manager
from tests.cluster import local_cluster
from tests.helpers import run_cli, run_cli_json, serving, started, wait_for
from tests.integration.test_metrics import exporter_port, scrape

SHARDS = 3


@pytest.fixture
def sharded(server, settings):
    manager = create_state_manager(settings.evolve(shards=SHARDS), server.url)
    yield manager
    manager.close()


def _settle(state, worker_id, count, *, fail=0, run_ms=lambda i: float(i)):
    """Submit ``count`` tasks (spread over the shards by id), claim them all and settle
    them; the first ``fail`` of them (by submission) fail."""
    epoch = state.register_worker(worker_id, pid=1, host="test")
    tasks = [Task(name="demo", args=(i,), submitted_at=time.time() - 0.5) for i in range(count)]
    index = {t.id: i for i, t in enumerate(tasks)}
    state.submit([t.to_json() for t in tasks])
    claimed: list[str] = []
    wait_for(lambda: claimed.extend(state.claim(worker_id, epoch, count)) or len(claimed) == count, what="claims")
    outcomes = []
    for raw in claimed:
        i = index[Task.from_json(raw).id]
        outcomes.append(Outcome(raw=raw, task_id=tasks[i].id, name="demo", ok=i >= fail, category="task_error",
                                message="x", wait_ms=500.0, run_ms=run_ms(i)))
    state.settle(worker_id, epoch, outcomes)


def _per_shard(views, stream):
    return [views[0].client.xlen(view.key(stream)) for view in views]


def test_views_name_each_shard_of_a_state(sharded, state, settings):
    """One view per shard (its key space, the shared client); one plain view otherwise; none for files."""
    views = views_of(sharded)
    assert [view.space for view in views] == sharded.spaces and len(views) == SHARDS
    assert all(view.client is sharded.redis for view in views)
    assert views[1].key(keys.EVENTS) == sharded.spaces[1].key(keys.EVENTS) != keys.EVENTS
    assert views_of(state) == [ShardView(client_of(state), keys.PLAIN)]
    files = create_state_manager(settings.evolve(state="file"), None)
    try:
        with pytest.raises(ConfigurationError, match="file state manager keeps no Redis streams"):
            views_of(files)
    finally:
        files.close()
    with pytest.raises(ConfigurationError):
        StreamFollower([], [keys.EVENTS])


def test_throughput_sums_each_shards_running_totals(sharded):
    """Completed and failed tasks of every shard count (each shard's n starts at 1)."""
    _settle(sharded, "w1", 60, fail=12)
    views = views_of(sharded)
    assert sum(1 for n in _per_shard(views, keys.WORK_COMPLETIONS) if n) >= 2
    now = server_time(views[0].client)
    rates = throughput(views, windows_s=(10, 60), now=now)  # all settled within 1 s: divided by 1 s
    assert rates == {"10s": {"completed_per_s": 48.0, "errors_per_s": 12.0},
                     "60s": {"completed_per_s": 48.0, "errors_per_s": 12.0}}
    assert throughput(views, windows_s=(10,), now=now + 4)["10s"] == {"completed_per_s": 12.0, "errors_per_s": 3.0}
    assert throughput(client_of(sharded), windows_s=(10,), now=now)["10s"]["completed_per_s"] == 0.0  # plain names


def test_recent_latency_takes_the_newest_samples_over_every_shard(sharded):
    """The newest `samples` entries overall, whichever shard holds them; sources by plain name."""
    _settle(sharded, "w1", 30, run_ms=lambda i: 1000.0 + i)
    time.sleep(0.01)  # later ids for the second batch
    _settle(sharded, "w1", 10, run_ms=float)
    views = views_of(sharded)
    latency = recent_latency(views, samples=10)
    assert latency["sources"] == {"queue_wait_ms": keys.WORK_COMPLETIONS, "run_ms": keys.WORK_COMPLETIONS}
    assert latency["run_ms"]["count"] == 10 and latency["run_ms"]["max"] == 9.0
    assert recent_latency(views)["run_ms"]["count"] == 40
    for value in (1.0, 2.0, 3.0, 4.0):  # metric samples rotate over the shards
        sharded.record_metric("run_ms", value, {"worker": "w1"})
        time.sleep(0.002)  # ids order entries of different shards to the millisecond only
    latency = recent_latency(views, samples=3)
    assert latency["sources"]["run_ms"] == keys.METRICS
    assert latency["run_ms"]["count"] == 3 and latency["run_ms"]["p50"] == 3.0  # 2, 3, 4: the newest three


def test_follower_replays_every_shard_in_id_order_then_polls_new_entries_of_two_shards(sharded):
    """replay() merges the shards' copies by id; poll() reads each shard and blocks on one in turn."""
    views = views_of(sharded)
    client = views[0].client
    for i in range(6):
        client.xadd(views[i % SHARDS].key(keys.EVENTS), {"i": i})
        time.sleep(0.002)
    follower = StreamFollower(views, [keys.EVENTS, keys.WORKER_EVENTS], since="-", block_ms=100)
    replayed = list(follower.replay())
    assert [e.fields["i"] for e in replayed] == [str(i) for i in range(6)]
    assert {e.stream for e in replayed} == {keys.EVENTS}
    started = time.monotonic()
    assert follower.poll() == []
    assert time.monotonic() - started >= 0.09  # waited its block_ms
    client.xadd(views[0].key(keys.WORKER_EVENTS), {"i": "a"})
    time.sleep(0.002)
    client.xadd(views[2].key(keys.EVENTS), {"i": "b"})
    entries = follower.poll()
    assert [(e.stream, e.fields["i"]) for e in entries] == [(keys.WORKER_EVENTS, "a"), (keys.EVENTS, "b")]
    assert follower.poll() == []

    follower.block_ms = 5000
    follower.client = fresh = create_client(sharded.url)  # as monitor does after a reconnect
    try:
        assert all(view.client is fresh for view in follower.views)
        for shard in (1, 2):  # whichever shard a poll blocks on, an entry anywhere ends it
            writer = threading.Timer(0.3, lambda s=shard: client.xadd(views[s].key(keys.EVENTS), {"i": f"late{s}"}))
            started = time.monotonic()
            writer.start()
            try:
                (entry,) = follower.poll()
            finally:
                writer.join()
            assert 0.2 < time.monotonic() - started < 2
            assert entry.stream == keys.EVENTS and entry.fields["i"] == f"late{shard}"
    finally:
        fresh.close()


def test_histograms_count_every_shards_completions_and_gaps_per_shard(sharded):
    """n is a running total per shard: no gap across shards; a shard's entries trimmed unread are skipped."""
    views = views_of(sharded)
    _settle(sharded, "w1", 90)
    histograms = LatencyHistograms()
    histograms.update(views)
    assert sum(histograms.counts["run_ms"]) == 90 and histograms.skipped == 0
    seen = _per_shard(views, keys.WORK_COMPLETIONS)
    _settle(sharded, "w1", 60)
    added = [now - before for now, before in zip(_per_shard(views, keys.WORK_COMPLETIONS), seen, strict=True)]
    assert added[1] > 2
    views[0].client.xtrim(views[1].key(keys.WORK_COMPLETIONS), maxlen=2, approximate=False)
    histograms.update(views)
    histograms.update(views)  # nothing new: nothing counted twice
    assert histograms.skipped == added[1] - 2
    assert sum(histograms.counts["run_ms"]) + histograms.skipped == 150 == sharded.get_counter(keys.TOTAL_WORK_COMPLETED)


# -- the command line on a sharded layout -----------------------------------------------------
def test_status_and_monitor_read_every_shard_after_a_sharded_run(tmp_path):
    """run --shards 3: status's throughput and latency, monitor's replay see all 2,000 tasks."""
    report = run_cli_json("run", "--shards", "3", "--workers", "2", "--demo", "2000", cwd=tmp_path)
    assert report["total_work_completed"] == 2000 and report["shards"] == 3
    status = run_cli_json("status", cwd=tmp_path)
    assert status["shards"] == 3
    assert [shard["pending"] for shard in status["queues"]["by_shard"]] == [0, 0, 0]
    assert status["throughput"]["60s"]["completed_per_s"] > 0
    assert status["latency"]["run_ms"]["count"] == 2000 == status["latency"]["queue_wait_ms"]["count"]
    assert status["latency"]["sources"]["run_ms"] == keys.WORK_COMPLETIONS
    result = run_cli("monitor", "--no-follow", "--since", "all", "--stream", "completions", "--json",
                     cwd=tmp_path, check=True)
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(entries) == 2000 and {e["stream"] for e in entries} == {keys.WORK_COMPLETIONS}
    assert [id_order(e["id"]) for e in entries] == sorted(id_order(e["id"]) for e in entries)
    assert len({e["fields"]["task_id"] for e in entries}) == 2000
    assert max(int(e["fields"]["n"]) for e in entries) < 2000  # n counts per shard


def test_monitor_and_metrics_follow_a_serving_sharded_run(tmp_path):
    """Live: monitor prints the completions of every shard as they come, the exporter's histograms count them all."""
    with serving(tmp_path, "--shards", "3", workers=2):
        with started("monitor", "--stream", "workers", "--stream", "completions", "--since", "0", "--json",
                     cwd=tmp_path) as (monitor, out, _), started("metrics", "--port", "0", cwd=tmp_path) as (exporter, _, err):
            port = exporter_port(err)
            out.wait_for(lambda line: '"registered"' in line, what="the replayed registrations")
            run_cli("enqueue", "demo", "--args", "[1]", "--count", "300", cwd=tmp_path, check=True)
            wait_for(lambda: sum(keys.WORK_COMPLETIONS in line for line in out.lines) >= 300, timeout=30,
                     what="300 completion lines")
            _, samples = scrape(port)
            for proc in (monitor, exporter):
                proc.send_signal(signal.SIGINT)
                assert proc.wait(timeout=10) == 0
    entries = [json.loads(line) for line in out.lines]
    completions = [e for e in entries if e["stream"] == keys.WORK_COMPLETIONS]
    assert len(completions) == 300 and len({e["fields"]["task_id"] for e in completions}) == 300
    assert {e["stream"] for e in entries} == {keys.WORK_COMPLETIONS, keys.WORKER_EVENTS}
    assert samples["orchestrator_mp_work_completed_total"] == 300
    assert samples["orchestrator_mp_run_seconds_count"] == 300
    assert samples["orchestrator_mp_latency_samples_skipped_total"] == 0


@pytest.mark.slow
def test_readers_on_a_real_cluster(tmp_path, settings):
    """On a 3-master Redis Cluster (RedisCluster client): no reader crosses a slot, and all see every shard."""
    with local_cluster(tmp_path / "cluster") as cluster:
        state = create_state_manager(settings, cluster.url)
        try:
            views = views_of(state)
            assert len(views) == 3 and isinstance(views[0].client, RedisCluster)
            assert abs(server_time(views[0].client) - time.time()) < 5
            follower = StreamFollower(views, [keys.WORK_COMPLETIONS, keys.METRICS], since=None, block_ms=300)
            assert list(follower.replay()) == []
            _settle(state, "w1", 90)
            polled = []
            wait_for(lambda: polled.extend(follower.poll()) or len(polled) == 90, what="90 completions")
            assert {e.stream for e in polled} == {keys.WORK_COMPLETIONS}
            assert throughput(views, windows_s=(60,))["60s"]["completed_per_s"] > 0
            assert recent_latency(views)["run_ms"]["count"] == 90
            histograms = LatencyHistograms()
            histograms.update(views)
            assert sum(histograms.counts["run_ms"]) == 90 and histograms.skipped == 0
            follower.block_ms = 3000
            writer = threading.Timer(0.3, lambda: state.record_metric("run_ms", 1.0))
            writer.start()
            try:
                (entry,) = follower.poll()
            finally:
                writer.join()
            assert entry.stream == keys.METRICS
        finally:
            state.close()
