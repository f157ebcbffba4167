"""`monitor` as a user meets it: lines appear as entries are appended, filters, JSON, replay."""
from __future__ import annotations

import json
import re
import signal

from tests.helpers import run_cli, serving, started, wait_for

LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (events|metrics|workers|errors|completions) +\S+ ")


def test_monitor_prints_each_entry_as_it_happens(tmp_path):
    """Following a serving run: an enqueued task shows up as busy/idle events and a completion line."""
    with serving(tmp_path, workers=2):
        with started("monitor", "--stream", "events", "--stream", "workers", "--stream", "completions",
                     "--since", "0", cwd=tmp_path) as (proc, out, err):
            out.wait_for(lambda line: " workers " in line and " registered " in line, what="the replayed registration")
            enqueued = run_cli("enqueue", "demo", "--args", "[7]", cwd=tmp_path, check=True).stdout.strip()
            done = out.wait_for(lambda line: " completions " in line and enqueued[:12] in line, what="the completion")
            assert LINE.match(done) and "#1 demo" in done and "wait " in done and "run " in done
            busy = out.wait_for(lambda line: " events " in line and f"task={enqueued[:12]}" in line, what="busy")
            assert " busy " in busy and "batch=1" in busy
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
    assert all(LINE.match(line) for line in out.lines), out.text()
    assert err.text() == ""


def test_monitor_waits_for_an_orchestrator_and_never_holds_the_database(tmp_path):
    """Started first, monitor waits; a run on the same db is not refused; its entries are printed."""
    with started("monitor", "--stream", "workers", "--stream", "errors", cwd=tmp_path) as (proc, out, err):
        err.wait_for(lambda line: "waiting for an orchestrator" in line, what="the waiting notice")
        report = json.loads(run_cli("run", "--workers", "1", "--demo", "20", "--demo-fail-rate", "0.1", "--json",
                                    cwd=tmp_path, check=True).stdout)
        assert report["run"]["errors"] == 2
        out.wait_for(lambda line: " errors " in line and "#2 demo" in line, what="the second error")
        out.wait_for(lambda line: " deregistered " in line, what="the worker's deregistration")
        wait_for(lambda: "lost the orchestrator" in err.text() or err.text().count("waiting for an orchestrator") == 2,
                 what="monitor waiting again after the run ended")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    registered = [line for line in out.lines if " registered " in line]
    assert len(registered) == 1 and "pid=" in registered[0]
    assert sum(" task_error: DemoFailure" in line for line in out.lines) == 2


def test_monitor_replays_with_filters_json_and_count(tmp_path):
    """--since 0 --no-follow replays; --worker filters by id glob; --json is one object per line."""
    run_cli("run", "--workers", "2", "--demo", "40", cwd=tmp_path, check=True)
    result = run_cli("monitor", "--since", "0", "--no-follow", "--json", "--worker", "*:1", cwd=tmp_path, check=True)
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert entries and all(e["fields"]["worker"].endswith(":1") for e in entries)
    assert {e["stream"] for e in entries} == {"events:stream", "stream:worker_events"}
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    assert all(set(e) == {"stream", "id", "time", "fields"} for e in entries)
    three = run_cli("monitor", "--since", "0", "--no-follow", "--stream", "completions", "--count", "3", cwd=tmp_path,
                    check=True)
    lines = three.stdout.splitlines()
    assert len(lines) == 3 and all(" completions " in line for line in lines)
    assert [int(re.search(r" #(\d+) ", line).group(1)) for line in lines] == [1, 2, 3]


def test_monitor_bad_arguments_are_one_line_errors(tmp_path):
    """Unknown streams or --since values exit 2 naming the value; a missing db exits 3."""
    bad_since = run_cli("monitor", "--since", "yesterday", cwd=tmp_path)
    assert bad_since.returncode == 2 and "'yesterday'" in bad_since.stderr
    bad_stream = run_cli("monitor", "--stream", "queue", cwd=tmp_path)
    assert bad_stream.returncode == 2 and "stream must be one of" in bad_stream.stderr
    missing = run_cli("monitor", "--no-follow", "--since", "0", "--db", "nothing.db", cwd=tmp_path)
    assert missing.returncode == 3 and "no database at" in missing.stderr
    for result in (bad_since, bad_stream, missing):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
