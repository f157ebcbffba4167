"""Lock-free global rate limits and concurrency caps, with real workers."""
from __future__ import annotations

import pathlib

import pytest

from orchestrator_mp import ContinuousOrchestrator, Settings, open_state
from orchestrator_mp.exceptions import ConfigurationError
from orchestrator_mp.limits import parse_rate
from orchestrator_mp.models import Task
from orchestrator_mp.state.shards import shard_of
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks before workers fork)
from tests.helpers import run_cli, run_cli_json, settings_for


@pytest.mark.parametrize(
    "text, count, period",
    [("30/m", 30, 60.0), ("5000/h", 5000, 3600.0), ("10/s", 10, 1.0), ("100/10s", 100, 10.0), ("2/500ms", 2, 0.5)],
)
def test_rates_parse(text, count, period):
    """Rates read as count per period."""
    rate = parse_rate(text)
    assert (rate.count, rate.period_s) == (count, period)


@pytest.mark.parametrize("text", ["", "30", "x/m", "0/s", "5/fortnight", "5/0s"])
def test_bad_rates_are_refused(text):
    """A malformed rate is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match="rate"):
        parse_rate(text)


@pytest.mark.parametrize("shards", [None, 3], ids=["plain", "sharded"])
def test_rate_limit_is_respected_by_all_workers_together(db_path, shards):
    """Four workers share one 40/s limit: the achieved rate is within 5% of it."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=4, shards=shards)) as orch:
        handles = orch.submit_many("tests.rate_limited", [(i,) for i in range(120)])
        started = sorted(h.result(timeout=60) for h in handles)
        counters = orch.counters()
        audit = orch.audit()
    achieved = (len(started) - 1) / (started[-1] - started[0])
    gaps = [b - a for a, b in zip(started, started[1:], strict=False)]
    print(f"\nconfigured 40/s, achieved {achieved:.2f}/s; deferrals {counters['total_deferred']}; "
          f"smallest gap {min(gaps) * 1000:.1f} ms")
    assert abs(achieved - 40) / 40 <= 0.05
    assert counters["total_errors"] == 0 and counters["total_deferred"] > 0
    assert audit["ok"], audit


@pytest.mark.parametrize("shards", [None, 3], ids=["plain", "sharded"])
def test_concurrency_cap_is_never_exceeded(db_path, tmp_path, shards):
    """At most 2 holders of the cap at once, across 4 workers; every call completes."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=4, shards=shards)) as orch:
        handles = orch.submit_many("tests.capped", [(str(tmp_path), 40) for _ in range(40)])
        observed = [h.result(timeout=60) for h in handles]
        audit = orch.audit()
    peak = max(int(line) for line in open(tmp_path / "max"))
    print(f"\ncap 2: highest number of holders observed {peak}")
    assert peak <= 2 and max(observed) <= 2
    assert audit["ok"] and audit["counters"]["total_work_completed"] == 40


@pytest.mark.parametrize("shards", [None, 3], ids=["plain", "sharded"])
def test_slot_of_a_killed_holder_is_freed_by_recovery(db_path, tmp_path, shards):
    """A worker dying while holding the only slot frees it: the waiting tasks run."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=2, shards=shards)) as orch:
        first = orch.submit("tests.capped_crash", str(tmp_path), "a")
        others = orch.submit_many("tests.capped_crash", [(str(tmp_path), f"b{i}") for i in range(3)])
        assert first.result(timeout=30) == "a"
        assert [h.result(timeout=30) for h in others] == ["b0", "b1", "b2"]
        deaths = len(orch.supervisor.deaths)
        audit = orch.audit()
    assert deaths >= 1
    assert audit["ok"], audit


@pytest.mark.parametrize("state", ["locked", "file"])
def test_limited_tasks_fail_clearly_where_limits_are_not_supported(db_path, state):
    """On the baseline and the file state a rate-limited task fails at once, naming the state."""
    with ContinuousOrchestrator(settings=settings_for(db_path, workers=1, state=state)) as orch:
        handle = orch.submit("tests.rate_limited", 1)
        error = handle.exception(timeout=30)
        audit = orch.audit()
    assert error is not None and error.category == "task_error"
    assert f"need the lockfree state; this run uses {state}" in error.remote_message
    assert audit["ok"], audit


def test_run_demo_rate_from_the_command_line(tmp_path):
    """run --demo-rate: the workers together keep to the rate; deferrals are not errors."""
    report = run_cli_json("run", "--workers", "4", "--demo", "150", "--demo-rate", "50/s", cwd=tmp_path)
    print(f"\n--demo-rate 50/s: {report['throughput_per_s']} tasks/s, deferred {report['counters']['total_deferred']}")
    assert report["total_work_completed"] == 150 and report["total_errors"] == 0
    assert 40 <= report["throughput_per_s"] <= 52
    assert report["counters"]["total_deferred"] > 0 and report["consistent"] is True
    bad = run_cli("run", "--demo", "1", "--demo-rate", "fast", cwd=tmp_path)
    assert bad.returncode == 2 and "rate must look like" in bad.stderr


def test_enqueue_with_import_gives_a_capped_task_its_shard_key(tmp_path):
    """On a sharded layout, `enqueue --import` routes a capped task to its cap's shard;
    without the import the task cannot know its cap and goes by its id."""
    env = {"PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2])}
    run_cli("run", "--shards", "3", "--demo", "1", "--workers", "1", cwd=tmp_path, check=True)
    with_import = run_cli("enqueue", "tests.capped", "--args", '["x", 1]', "--import", "tests.tasks_for_tests",
                          cwd=tmp_path, check=True, env=env).stdout.strip()
    without = run_cli("enqueue", "tests.capped", "--args", '["x", 1]', cwd=tmp_path, check=True).stdout.strip()
    with open_state(Settings(db_path=str(tmp_path / "orchestrator_mp.db"))) as state:
        queued = {Task.from_json(raw).id: (index, Task.from_json(raw))
                  for index, space in enumerate(state.spaces) for raw in state.redis.lrange(space.QUEUE, 0, -1)}
    shard, task = queued[with_import]
    assert task.shard_key == "cap:task:tests.capped" and shard == shard_of(task.shard_key, 3)
    assert queued[without][1].shard_key is None
