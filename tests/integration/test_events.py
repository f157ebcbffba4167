"""The read side on a real server: replay, follow, throughput and latency from the streams."""
from __future__ import annotations

import threading
import time

import pytest

from orchestrator_mp import keys
from orchestrator_mp.events import (
    StreamFollower,
    client_of,
    server_time,
)
from orchestrator_mp.figures import recent_latency, throughput
from orchestrator_mp.models import Outcome, Task


def _settle(state, worker_id, count, fail=0):
    """Submit, claim and settle ``count`` tasks through the real atomic steps."""
    epoch = state.register_worker(worker_id, pid=1, host="test")
    tasks = [Task(name="demo", args=(i,), submitted_at=time.time() - 0.5) for i in range(count)]
    state.submit([t.to_json() for t in tasks])
    claimed = state.claim(worker_id, epoch, count)
    outcomes = [
        Outcome(raw=raw, task_id=t.id, name=t.name, ok=i >= fail, category="task_error", message="x",
                wait_ms=500.0 + i, run_ms=float(i))
        for i, (raw, t) in enumerate(zip(claimed, reversed(tasks), strict=True))
    ]
    state.settle(worker_id, epoch, outcomes)
    return epoch


def test_replay_merges_streams_in_id_order_then_follow_sees_only_new(state):
    """replay() yields retained entries of several streams by id; poll() only later ones."""
    client = client_of(state)
    for i in range(5):  # ids order entries across streams to the millisecond: space them out
        client.xadd(keys.EVENTS, {"i": i})
        time.sleep(0.002)
        client.xadd(keys.WORKER_EVENTS, {"i": i})
        time.sleep(0.002)
    follower = StreamFollower(client, [keys.EVENTS, keys.WORKER_EVENTS], since="-", block_ms=100)
    replayed = list(follower.replay())
    assert len(replayed) == 10
    assert [e.fields["i"] for e in replayed] == [str(i) for i in range(5) for _ in range(2)]
    assert [e.stream for e in replayed[:2]] == [keys.EVENTS, keys.WORKER_EVENTS]
    assert follower.poll() == []
    client.xadd(keys.WORKER_EVENTS, {"i": "new"})
    (entry,) = follower.poll()
    assert entry.stream == keys.WORKER_EVENTS and entry.fields == {"i": "new"}


def test_follow_from_now_skips_history_and_blocks_until_an_entry_arrives(state):
    """since=None starts at the end; a blocked poll returns as soon as an entry is appended."""
    client = client_of(state)
    client.xadd(keys.EVENTS, {"old": 1})
    follower = StreamFollower(client, [keys.EVENTS, keys.METRICS], since=None, block_ms=5000)
    assert list(follower.replay()) == []
    writer = threading.Timer(0.3, lambda: state.record_metric("queue_wait_ms", 12.5, {"worker": "w9"}))
    started = time.monotonic()
    writer.start()
    try:
        (entry,) = follower.poll()
    finally:
        writer.join()
    assert 0.2 < time.monotonic() - started < 4
    assert entry.stream == keys.METRICS and entry.fields["name"] == "queue_wait_ms" and entry.worker == "w9"


def test_since_a_time_replays_only_the_entries_after_it(state):
    """A start id made from a time excludes older entries."""
    client = client_of(state)
    client.xadd(keys.EVENTS, {"n": "old"})
    time.sleep(0.05)
    cut = f"{int(server_time(client) * 1000)}-0"
    client.xadd(keys.EVENTS, {"n": "new"})
    follower = StreamFollower(client, [keys.EVENTS], since=cut)
    assert [e.fields["n"] for e in follower.replay()] == ["new"]


def test_throughput_counts_settled_tasks_from_running_totals(state):
    """Tasks settled in the window, from the n of the first and newest entries."""
    _settle(state, "w1", 40, fail=10)
    client = client_of(state)
    now = server_time(client)
    just_now = throughput(client, windows_s=(10, 60), now=now)  # all settled within 1 s: divided by 1 s
    assert just_now == {"10s": {"completed_per_s": 30.0, "errors_per_s": 10.0},
                        "60s": {"completed_per_s": 30.0, "errors_per_s": 10.0}}
    later = throughput(client, windows_s=(10, 60), now=now + 5)  # divided by the 5 s since the first entry
    assert later["10s"] == later["60s"] == {"completed_per_s": 6.0, "errors_per_s": 2.0}
    much_later = throughput(client, windows_s=(10, 60), now=now + 30)
    assert much_later["10s"] == {"completed_per_s": 0.0, "errors_per_s": 0.0}
    assert much_later["60s"] == {"completed_per_s": 1.0, "errors_per_s": 0.3}


def test_latency_from_completions_then_from_metric_samples_when_present(state):
    """Percentiles come from work_completions until metrics:stream carries the samples."""
    _settle(state, "w1", 100)
    client = client_of(state)
    latency = recent_latency(client)
    assert latency["sources"] == {"queue_wait_ms": keys.WORK_COMPLETIONS, "run_ms": keys.WORK_COMPLETIONS}
    assert latency["run_ms"]["count"] == 100
    assert latency["run_ms"]["p50"] == 49.0 and latency["run_ms"]["p99"] == 98.0 and latency["run_ms"]["max"] == 99.0
    assert latency["queue_wait_ms"]["p95"] == 594.0
    for value in (1.0, 2.0, 3.0, 4.0):
        state.record_metric("run_ms", value, {"worker": "w1"})
    state.record_metric("something_else", 1e6)
    latency = recent_latency(client)
    assert latency["sources"] == {"queue_wait_ms": keys.WORK_COMPLETIONS, "run_ms": keys.METRICS}
    assert latency["run_ms"] == {"count": 4, "mean": 2.5, "p50": 2.0, "p95": 4.0, "p99": 4.0, "max": 4.0}


@pytest.mark.parametrize("samples", [1, 10])
def test_latency_sample_count_is_bounded(state, samples):
    """Only the newest `samples` tasks are read."""
    _settle(state, "w1", 30)
    assert recent_latency(client_of(state), samples=samples)["run_ms"]["count"] == samples
