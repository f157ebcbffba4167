"""The Python twins of the steps' scripts, the kind registry, and the bench report maths (no Redis)."""
from __future__ import annotations

import pytest

from orchestrator_mp import bench
from orchestrator_mp.config import STATE_KINDS
from orchestrator_mp.exceptions import ConfigurationError
from orchestrator_mp.models import Outcome
from orchestrator_mp.state import state_kind
from orchestrator_mp.state.steps import claim, ops, reclaim, settle


def test_every_configured_kind_is_registered_and_nothing_else():
    """config.STATE_KINDS and the factory registry list the same kinds; only file runs without a server."""
    assert [state_kind(k).name for k in STATE_KINDS] == list(STATE_KINDS)
    assert {k for k in STATE_KINDS if not state_kind(k).needs_server} == {"file"}
    with pytest.raises(ConfigurationError, match="state must be one of lockfree, locked, file"):
        state_kind("sqlite")


@pytest.mark.parametrize(
    "raw, max_crashes, expected",
    [
        ('{"crashes":0,"id":"a"}', 3, ('{"crashes":1,"id":"a"}', "", "")),
        ('{"crashes":2,"id":"a"}', 3, (None, "poison", "crashed 3 workers (limit 3)")),
        ('{"id":"a"}', 3, (None, "bad_payload", "in-flight entry is not a task")),
        ('{"crashes":0,"s":"x\ny"}', 3, ('{"crashes":1,"s":"x\ny"}', "", "")),
    ],
)
def test_requeue_or_poison_mirrors_the_reclaim_script(raw, max_crashes, expected):
    """Crash counts are raised by string edit, as RECLAIM.lua does; poison and garbage are dead-lettered."""
    assert reclaim.requeue_or_poison(raw, max_crashes) == expected


def test_fair_share_and_settle_split_mirror_the_scripts():
    """CLAIM's fair share, and SETTLE's once-only counting with duplicates."""
    assert claim.fair_share(16, 4, 4) == 1 and claim.fair_share(16, 100, 2) == 16 and claim.fair_share(3, 0, 1) == 0
    ok = Outcome(raw="a", task_id="1", name="n", ok=True)
    bad = Outcome(raw="b", task_id="2", name="n", ok=False)
    done, failed, duplicates = settle.split_settled(["a", "b"], [ok, ok, bad])
    assert (done, failed, duplicates) == ([ok], [bad], 1)


def test_encode_value_matches_redis_py():
    """Values are stored as redis-py would send them."""
    assert [ops.encode_value(v) for v in ("x", 3, 1.5, b"y")] == ["x", "3", "1.5", "y"]
    with pytest.raises(ConfigurationError):
        ops.encode_value(None)


def _report(lockfree_8, locked_8, consistent=True):
    rows = [
        {"variant": "lockfree", "processes": 1, "updates_per_s": 2000.0, "consistent": True},
        {"variant": "locked", "processes": 1, "updates_per_s": 500.0, "consistent": True},
        {"variant": "lockfree", "processes": 8, "updates_per_s": lockfree_8, "consistent": True},
        {"variant": "locked", "processes": 8, "updates_per_s": locked_8, "consistent": consistent},
    ]
    report = {"contention": rows, "end_to_end": []}
    report["ratios"] = bench.ratios(report)
    return report


def test_ratios_and_the_check_use_the_highest_process_count():
    """The check compares lockfree/locked at the highest count, and refuses inconsistent runs."""
    report = _report(8000.0, 1000.0)
    assert report["ratios"]["contention"] == {"1": {"locked": 4.0}, "8": {"locked": 8.0}}
    assert bench.check(report, 5.0) == (True, "check ok: lockfree/locked at 8 processes = 8.00x (minimum 5.00x)")
    assert bench.check(report, 9.0)[0] is False
    assert bench.check(_report(8000.0, 1000.0, consistent=False), 1.0)[0] is False


def test_quick_plan_keeps_the_three_implementations():
    """--quick compares lockfree, locked and file; the full run adds the default-policy and global variants."""
    assert bench.Plan.build(STATE_KINDS, (1, 8), quick=True).variants == ("lockfree", "locked", "file")
    full = bench.Plan.build(STATE_KINDS, (1, 8), quick=False).variants
    assert full == ("lockfree", "locked", "locked-default", "locked-global", "file")
    assert bench.Plan.build(("file",), (1,), quick=False).variants == ("file",)
