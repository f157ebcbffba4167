"""The largest batch the API allows moves every task, on every implementation (issue 13,
hole 1: a claim of 8,000 failed on Lua's unpack after its RPOP and lost the batch).

Redis keeps a script's writes made before an error, so a script must check and size
everything before its first write (STYLE rule 16); these tests drive each step with the
largest input the API accepts and one past it."""
from __future__ import annotations

import pytest

from orchestrator_mp import ContinuousOrchestrator
from orchestrator_mp.config import MAX_BATCH_SIZE, MAX_STATE_FIELDS, Settings
from orchestrator_mp.exceptions import ConfigurationError
from orchestrator_mp.models import Task
from tests import tasks_for_tests  # noqa: F401  (registers the test tasks)
from tests.contract import failed, ok, raw_task
from tests.helpers import settings_for


def _submit(manager, count):
    raws = [raw_task("tests.add", i, 1) for i in range(count)]
    for start in range(0, count, 5000):
        manager.submit(raws[start : start + 5000])
    return raws


def _everywhere(manager):
    depths = manager.queue_depths()
    return depths["pending"] + depths["inflight"] + depths["delayed"]


def test_a_claim_of_the_largest_batch_moves_every_task(manager):
    """A claim of MAX_BATCH_SIZE tasks lands all of them in flight, and settles count each once."""
    raws = _submit(manager, MAX_BATCH_SIZE + 5)
    epoch = manager.register_worker("w1", pid=1, host="h")
    claimed = []
    while len(claimed) < MAX_BATCH_SIZE:  # a sharded manager fills its batch shard by shard
        got = manager.claim("w1", epoch, MAX_BATCH_SIZE - len(claimed))
        assert got, "the queue ran dry before the batch was full"
        claimed += got
    assert len(claimed) == MAX_BATCH_SIZE and len(set(claimed)) == MAX_BATCH_SIZE
    assert manager.queue_depths()["by_worker"]["w1"] == MAX_BATCH_SIZE
    assert _everywhere(manager) == len(raws)
    result = manager.settle("w1", epoch, [ok(raw) for raw in claimed[:-10]] + [failed(raw) for raw in claimed[-10:]])
    assert (result.completed, result.failed, result.duplicates) == (MAX_BATCH_SIZE - 10, 10, 0)
    counters = manager.get_counters()
    assert counters["total_work_completed"] == MAX_BATCH_SIZE - 10 and counters["total_errors"] == 10
    assert manager.audit()["ok"]


def test_a_claim_past_the_bound_is_refused_and_moves_nothing(manager):
    """One task more than MAX_BATCH_SIZE is a ConfigurationError naming the bound; nothing moves."""
    raws = _submit(manager, MAX_BATCH_SIZE + 1)
    epoch = manager.register_worker("w1", pid=1, host="h")
    with pytest.raises(ConfigurationError, match="10,000"):
        manager.claim("w1", epoch, MAX_BATCH_SIZE + 1)
    with pytest.raises(ConfigurationError):
        manager.wait_claim("w1", epoch, MAX_BATCH_SIZE + 1, 1, 0.01)
    assert manager.queue_depths()["pending"] == len(raws)


def test_a_reclaim_of_the_largest_batch_requeues_every_task(manager):
    """A worker holding MAX_BATCH_SIZE tasks dies: all of them return to the queue, crash count raised."""
    raws = _submit(manager, MAX_BATCH_SIZE)
    epoch = manager.register_worker("w1", pid=1, host="h")
    held = 0
    while held < MAX_BATCH_SIZE:
        held += len(manager.claim("w1", epoch, MAX_BATCH_SIZE - held))
    result = manager.reclaim("w1", max_crashes=3, crashed=True)
    assert (result.requeued, result.dead_lettered) == (MAX_BATCH_SIZE, 0)
    depths = manager.queue_depths()
    assert depths["pending"] == len(raws) and depths["inflight"] == 0
    assert manager.audit()["ok"]


def test_a_large_batch_with_suspects_claims_each_suspect_alone(manager):
    """Suspects deep inside a big claim still travel alone, and nothing is dropped on the way."""
    plain = [raw_task("tests.add", i, 1) for i in range(3000)]
    suspect = Task(name="tests.add", args=[0, 0], crashes=1).to_json()
    manager.submit(plain[:1500])
    manager.submit([suspect])
    manager.submit(plain[1500:])
    epoch = manager.register_worker("w1", pid=1, host="h")
    batches = []
    while batch := manager.claim("w1", epoch, MAX_BATCH_SIZE):
        batches.append(batch)
        manager.settle("w1", epoch, [ok(raw) for raw in batch])
    assert [suspect] in batches
    assert sum(len(batch) for batch in batches) == 3001
    assert all(suspect not in batch for batch in batches if len(batch) > 1)
    assert manager.get_counters()["total_work_completed"] == 3001 and manager.audit()["ok"]


def test_a_state_update_with_too_many_fields_is_refused(manager):
    """update_worker_state takes at most MAX_STATE_FIELDS fields; past that, nothing is written."""
    epoch = manager.register_worker("w1", pid=1, host="h")
    before = manager.get_worker_state("w1")
    fields = {f"f{i}": i for i in range(MAX_STATE_FIELDS + 1)}
    with pytest.raises(ConfigurationError, match=str(MAX_STATE_FIELDS)):
        manager.update_worker_state("w1", fields, epoch=epoch)
    assert manager.get_worker_state("w1") == before
    del fields[f"f{MAX_STATE_FIELDS}"]
    assert manager.update_worker_state("w1", fields, epoch=epoch)
    assert manager.get_worker_state("w1")["f63"] == "63"


def test_settings_bound_batch_size_with_a_clear_error():
    """batch_size past MAX_BATCH_SIZE is refused when the settings are made, naming field and bound."""
    assert Settings(batch_size=MAX_BATCH_SIZE).batch_size == MAX_BATCH_SIZE
    with pytest.raises(ConfigurationError, match=r"batch_size must be an integer from 1 to 10,000, got 10001"):
        Settings(batch_size=MAX_BATCH_SIZE + 1)


@pytest.mark.slow
@pytest.mark.parametrize("shards", [None, 3], ids=["plain", "sharded"])
def test_coroutines_in_the_largest_batches_all_complete(db_path, shards):
    """40,000 coroutine tasks claimed 10,000 at a time all complete, and the audit holds
    (the reported run: 64 completed, 39,936 lost)."""
    settings = settings_for(
        db_path, workers=2, batch_size=MAX_BATCH_SIZE, async_concurrency=MAX_BATCH_SIZE, shards=shards
    )
    with ContinuousOrchestrator(settings=settings) as orch:
        for start in range(0, 40_000, 10_000):
            orch.submit_many("tests.async_sleep", [(i, 0) for i in range(start, start + 10_000)])
        assert orch.wait(timeout=240)
        counters = orch.counters()
        assert counters["total_work_completed"] == 40_000 and counters["total_errors"] == 0
        assert orch.audit()["ok"]
