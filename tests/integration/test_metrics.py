"""`metrics`: Prometheus text over a real HTTP request, and the histograms fed from the streams."""
from __future__ import annotations

import re
import signal
import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator_mp import keys
from orchestrator_mp.dblock import read_owner
from orchestrator_mp.events import client_of
from orchestrator_mp.metrics import LatencyHistograms
from orchestrator_mp.models import Outcome, Task
from tests.helpers import run_cli, run_cli_json, serving, started, wait_for


def scrape(port: int) -> tuple[str, dict[str, float]]:
    """GET /metrics; returns the content type and {sample name{labels}: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return content_type, samples


def exporter_port(err) -> int:
    line = err.wait_for(lambda line: "serving Prometheus metrics on" in line, what="the exporter's address")
    return int(re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line).group(1))


def test_metrics_over_http_report_totals_gauges_and_latency_histograms(tmp_path):
    """A scrape during a run: counters equal status's, gauges per worker, histograms count every completion."""
    with started("metrics", "--port", "0", cwd=tmp_path) as (proc, _out, err):
        port = exporter_port(err)
        content_type, before = scrape(port)
        assert content_type.startswith("text/plain") and before["orchestrator_mp_up"] == 0
        with serving(tmp_path, workers=2):
            run_cli("enqueue", "demo", "--args", "[1]", "--count", "95", cwd=tmp_path, check=True)
            run_cli("enqueue", "demo", "--args", "[9, 0, 0.1]", "--count", "5", cwd=tmp_path, check=True)
            wait_for(lambda: run_cli_json("status", cwd=tmp_path)["queues"]["pending"] == 0
                     and run_cli_json("status", cwd=tmp_path)["queues"]["inflight"] == 0, timeout=30, what="the tasks")
            status = run_cli_json("status", cwd=tmp_path)
            _, m = scrape(port)
        _, after = scrape(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert m["orchestrator_mp_up"] == 1
    assert m["orchestrator_mp_work_created_total"] == 100
    assert m["orchestrator_mp_work_completed_total"] == 95 == status["counters"]["total_work_completed"]
    assert m["orchestrator_mp_errors_total"] == 5 and m["orchestrator_mp_dead_lettered_total"] == 5
    assert m["orchestrator_mp_queue_pending"] == 0 and m["orchestrator_mp_queue_inflight"] == 0
    assert m["orchestrator_mp_queue_dead_letter"] == 5
    assert m["orchestrator_mp_active_workers"] == 2 and m['orchestrator_mp_workers{status="idle"}'] == 2
    per_worker = {k: v for k, v in m.items() if k.startswith("orchestrator_mp_worker_completed_total{")}
    assert len(per_worker) == 2 and sum(per_worker.values()) == 95
    for name in ("orchestrator_mp_queue_wait_seconds", "orchestrator_mp_run_seconds"):
        buckets = [(float(k.split('le="')[1].rstrip('"}')), v) for k, v in m.items() if k.startswith(name + "_bucket")]
        counts = [v for _, v in sorted(buckets)]
        assert counts == sorted(counts) and counts[-1] == m[name + "_count"] == 95
        assert m[name + "_sum"] > 0
    assert m["orchestrator_mp_latency_samples_skipped_total"] == 0
    assert after["orchestrator_mp_up"] == 0  # the run stopped: nothing serves the database
    assert after["orchestrator_mp_queue_wait_seconds_count"] == 95  # histograms keep what they saw


def test_metrics_port_in_use_is_a_one_line_error(tmp_path):
    """Binding a taken port fails at once with exit code 2 and one line naming the port."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        result = run_cli("metrics", "--port", str(port), cwd=tmp_path, timeout=30)
    finally:
        holder.close()
    assert result.returncode == 2
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _settle(state, worker_id, count):
    epoch = state.register_worker(worker_id, pid=1, host="test")
    tasks = [Task(name="demo", args=(i,), submitted_at=time.time() - 0.002) for i in range(count)]
    state.submit([t.to_json() for t in tasks])
    claimed = state.claim(worker_id, epoch, count)
    outcomes = []
    for raw in claimed:
        task = Task.from_json(raw)
        outcomes.append(Outcome(raw=raw, task_id=task.id, name=task.name, ok=True, wait_ms=2.0, run_ms=30.0))
    state.settle(worker_id, epoch, outcomes)


def test_histograms_read_only_new_entries_and_count_trimmed_ones_as_skipped(state):
    """Each update reads what was appended since; entries trimmed unread are counted as skipped."""
    client = client_of(state)
    histograms = LatencyHistograms()
    _settle(state, "w1", 100)
    client.xtrim(keys.WORK_COMPLETIONS, maxlen=10, approximate=False)  # as MAXLEN ~ would, sooner
    histograms.update(client)
    assert histograms.counts["run_ms"][histograms.buckets.index(0.05)] == 10
    assert histograms.skipped == 90
    _settle(state, "w1", 5)
    histograms.update(client)
    histograms.update(client)  # nothing new: nothing counted twice
    assert sum(histograms.counts["run_ms"]) == sum(histograms.counts["queue_wait_ms"]) == 15
    assert histograms.skipped == 90
    assert histograms.sums["run_ms"] == pytest.approx(15 * 0.030)
    assert histograms.counts["queue_wait_ms"][histograms.buckets.index(0.0025)] == 15


def test_histograms_switch_to_metric_samples_once_workers_record_them(state):
    """queue_wait_ms / run_ms samples in metrics:stream take over from work_completions."""
    client = client_of(state)
    histograms = LatencyHistograms()
    _settle(state, "w1", 3)
    histograms.update(client)
    assert sum(histograms.counts["queue_wait_ms"]) == 3
    state.record_metric("queue_wait_ms", 7000.0, {"worker": "w1"})
    state.record_metric("run_ms", 0.1, {"worker": "w1"})
    _settle(state, "w1", 4)  # these completions' latencies arrive as metric samples instead
    histograms.update(client)
    assert sum(histograms.counts["queue_wait_ms"]) == 4 and sum(histograms.counts["run_ms"]) == 4
    assert histograms.counts["queue_wait_ms"][histograms.buckets.index(10)] == 1
    assert histograms.from_metrics == {"queue_wait_ms", "run_ms"}


def test_readers_reach_a_server_by_redis_url_from_anywhere(tmp_path):
    """--redis-url: status, monitor and metrics read the given server, whatever --db says."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with serving(tmp_path, workers=2):
        url = "unix://" + read_owner(str(tmp_path / "orchestrator_mp.db"))["socket"]
        status = run_cli_json("status", "--redis-url", url, cwd=elsewhere)
        assert len(status["active_workers"]) == 2
        lines = run_cli("monitor", "--redis-url", url, "--since", "0", "--no-follow", "--count", "3",
                        cwd=elsewhere, check=True).stdout.splitlines()
        assert len(lines) == 3 and " registered " in "\n".join(lines)
        with started("metrics", "--redis-url", url, "--port", "0", cwd=elsewhere) as (proc, _out, err):
            _, samples = scrape(exporter_port(err))
            assert samples["orchestrator_mp_up"] == 1 and samples["orchestrator_mp_active_workers"] == 2
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
    assert not (elsewhere / "orchestrator_mp.db").exists()
