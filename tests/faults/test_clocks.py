"""One clock (issue 13, hole 3): workers whose clocks are wrong still keep rate limits,
delays and time limits, because every due time and deadline is the server's.

The workers' ``time.time()`` is skewed (as on a host with a wrong clock) by patching it
in the forked worker processes; the test process and the Redis server keep theirs, and
every figure below is read on the server's clock (stream entry ids)."""
from __future__ import annotations

import pytest

from orchestrator_mp import ContinuousOrchestrator, TaskFailed, keys
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks before workers fork)
from tests.helpers import settings_for, skewed_clocks_in_forked_children

pytestmark = pytest.mark.slow


def _server_times(orch, stream):
    """Server time (seconds) of each entry of ``stream``, oldest first."""
    return [int(entry_id.split("-")[0]) / 1000.0 for entry_id, _ in orch.state.read_stream(stream, count=100_000)]


@pytest.mark.parametrize("skew_s", [5.0, -3.0], ids=["ahead-5s", "behind-3s"])
def test_a_rate_limit_holds_whatever_the_workers_clocks_say(db_path, skew_s):
    """50 tasks at 10/s on 2 workers with skewed clocks take ~4.9 s on the server's clock
    (before: 5 s ahead ran all 50 within 0.02 s, 3 s behind made every deferral 3 s late)."""
    with skewed_clocks_in_forked_children(skew_s):
        with ContinuousOrchestrator(settings=settings_for(db_path, workers=2)) as orch:
            handles = orch.submit_many("tests.rate_limited_10", [(i,) for i in range(50)])
            assert sorted(h.result(timeout=60) for h in handles) == list(range(50))
            finished = _server_times(orch, keys.WORK_COMPLETIONS)
            audit = orch.audit()
    span = finished[-1] - finished[0]
    print(f"\nworker clocks {skew_s:+.0f} s: 50 tasks at 10/s took {span:.2f} s on the server's clock (ideal 4.9)")
    assert 4.0 <= span <= 6.5
    assert audit["ok"], audit


def test_a_delay_is_kept_by_workers_whose_clocks_run_ahead(db_path):
    """A task delayed 1.5 s runs no sooner, although the workers' clocks say it is due."""
    with skewed_clocks_in_forked_children(5.0):
        with ContinuousOrchestrator(settings=settings_for(db_path, workers=2)) as orch:
            submitted_at = orch.state.clock()
            handle = orch.submit_with("tests.add", (1, 2), delay_s=1.5)
            assert handle.result(timeout=30) == 3
            (finished,) = _server_times(orch, keys.WORK_COMPLETIONS)
    print(f"\nworker clocks +5 s: a task delayed 1.5 s ran {finished - submitted_at:.2f} s after submission")
    assert finished - submitted_at >= 1.45


@pytest.mark.parametrize("skew_s", [5.0, -5.0], ids=["ahead-5s", "behind-5s"])
def test_a_time_limit_is_kept_by_workers_whose_clocks_are_wrong(db_path, skew_s):
    """A 0.5 s time limit ends a 4 s task near 0.5 s on the server's clock, however wrong
    the worker's clock (before: 5 s ahead let it finish; 5 s behind killed it at once)."""
    with skewed_clocks_in_forked_children(skew_s):
        with ContinuousOrchestrator(settings=settings_for(db_path, workers=1)) as orch:
            submitted_at = orch.state.clock()
            handle = orch.submit("tests.limited_sleep", 4)
            with pytest.raises(TaskFailed) as failure:
                handle.result(timeout=30)
            (failed_at,) = _server_times(orch, keys.WORK_ERRORS)
            audit = orch.audit()
    elapsed = failed_at - submitted_at
    print(f"\nworker clocks {skew_s:+.0f} s: a 0.5 s time limit ended the task {elapsed:.2f} s after submission")
    assert failure.value.category == "timeout"
    assert 0.45 <= elapsed <= 2.5
    assert audit["ok"], audit
