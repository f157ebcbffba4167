"""`status` as a user meets it: the worker table, JSON for scripts, --watch refreshing."""
from __future__ import annotations

import json
import re
import signal

from tests.helpers import run_cli, run_cli_json, serving, started, wait_for


def test_status_table_shows_every_live_worker_with_latency_and_throughput(tmp_path):
    """While serving: one row per worker (id, pid, host, status, ...), then queues, totals, rates, percentiles."""
    with serving(tmp_path, workers=2):
        run_cli("enqueue", "demo", "--args", "[1]", "--count", "50", cwd=tmp_path, check=True)
        wait_for(lambda: run_cli_json("status", cwd=tmp_path)["counters"]["total_work_completed"] == 50,
                 timeout=30, what="the tasks")
        report = run_cli_json("status", cwd=tmp_path)
        text = run_cli("status", cwd=tmp_path, check=True).stdout
    assert "active workers: 2 (2 idle)" in text
    header = next(line for line in text.splitlines() if line.lstrip().startswith("worker"))
    assert re.findall(r"\S+(?: \S+)?", header.strip()) == [
        "worker", "pid", "host", "status", "task", "last activity", "completed", "errors", "ver/epoch"
    ]
    for worker_id in report["active_workers"]:
        row = next(line for line in text.splitlines() if line.startswith(worker_id))
        info = report["workers"][worker_id]
        assert info["pid"] in row and info["host"] in row and " idle " in row
        assert f"v{info['version']}/e{info['epoch']}" in row
    assert "queue: 0 pending, 0 in flight, 0 dead-lettered" in text
    assert "total_work_completed=50" in text
    assert re.search(r"throughput: [\d.,]+ completed/s, 0\.0 errors/s \(last 10s\)", text)
    assert "latency over the newest 50 tasks" in text
    assert re.search(r"queue wait +[\d.]+ m?s +[\d.]+ m?s", text) and "run time" in text
    assert "consistent: True" in text


def test_status_json_keeps_its_keys_and_adds_rates_and_percentiles(tmp_path):
    """--json: active_workers, counters, workers, queues, plus throughput and latency per metric."""
    run_cli("run", "--workers", "2", "--demo", "200", "--demo-fail-rate", "0.05", cwd=tmp_path, check=True)
    report = run_cli_json("status", cwd=tmp_path)
    assert {"active_workers", "counters", "workers", "queues", "consistent", "throughput", "latency"} <= set(report)
    assert report["counters"]["total_work_completed"] == 190 and report["counters"]["total_errors"] == 10
    assert sum(w["completed"] for w in report["workers"].values()) == 190
    assert set(report["throughput"]) == {"10s", "60s"}
    assert report["throughput"]["60s"]["completed_per_s"] > 0
    for metric in ("queue_wait_ms", "run_ms"):
        summary = report["latency"][metric]
        assert summary["count"] == 190
        assert 0 <= summary["p50"] <= summary["p95"] <= summary["p99"] <= summary["max"]
        assert report["latency"]["sources"][metric] == "work_completions"


def test_status_watch_refreshes_and_never_holds_the_database(tmp_path):
    """--watch started before any run waits, then shows frames of the run; SIGTERM ends it with 0."""
    with started("status", "--watch", "--interval", "0.2", cwd=tmp_path) as (proc, out, err):
        err.wait_for(lambda line: "no orchestrator serves" in line, what="the waiting notice")
        with serving(tmp_path, workers=2):
            frames = wait_for(lambda: out.text().count("active workers: 2") >= 2, what="two frames of the run")
            assert frames
        wait_for(lambda: err.text().count("no orchestrator serves") >= 2, what="waiting again after the run")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    text = out.text()
    assert text.count("consistent: True") >= 2
    assert re.search(r"^\S+:\d+:0 +\d+ ", text, re.M) and re.search(r"^\S+:\d+:1 +\d+ ", text, re.M)


def test_status_watch_json_prints_one_object_per_line(tmp_path):
    """--watch --json: each refresh is one JSON object on its own line."""
    run_cli("run", "--workers", "1", "--demo", "10", cwd=tmp_path, check=True)
    with serving(tmp_path, workers=1):
        with started("status", "--watch", "--json", "--interval", "0.2", cwd=tmp_path) as (proc, out, _err):
            wait_for(lambda: len(out.lines) >= 3, what="three refreshes")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
    reports = [json.loads(line) for line in out.lines]
    assert all(r["counters"]["total_work_completed"] == 10 and len(r["active_workers"]) == 1 for r in reports)
