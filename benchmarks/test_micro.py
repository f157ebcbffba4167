"""Single-process cost of the operations the orchestrator makes most, per implementation."""
from __future__ import annotations

import pytest

from orchestrator_mp.models import Outcome, Task


def _record(benchmark, collected, manager, group):
    collected["micro"].setdefault(group, {})[manager.variant] = benchmark.stats.stats.mean


@pytest.mark.benchmark(group="micro: update_worker_field")
def test_update_worker_field(benchmark, manager, collected):
    """One versioned field update of the caller's own worker state."""
    epoch = manager.register_worker("w", pid=1, host="bench")
    benchmark(manager.update_worker_field, "w", "status", "busy", epoch=epoch)
    _record(benchmark, collected, manager, "update_worker_field")


@pytest.mark.benchmark(group="micro: increment_counter")
def test_increment_counter(benchmark, manager, collected):
    """One increment of a shared counter."""
    benchmark(manager.increment_counter, "bench_counter")
    _record(benchmark, collected, manager, "increment_counter")


@pytest.mark.benchmark(group="micro: batch_get_worker_states(16)")
def test_batch_get_worker_states(benchmark, manager, collected):
    """The states of 16 workers in one call."""
    ids = [f"w{i}" for i in range(16)]
    for worker_id in ids:
        manager.register_worker(worker_id, pid=1, host="bench")
    states = benchmark(manager.batch_get_worker_states, ids)
    assert len(states) == 16 and all(states.values())
    _record(benchmark, collected, manager, "batch_get_worker_states(16)")


@pytest.mark.benchmark(group="micro: claim-to-complete cycle")
def test_claim_to_complete_cycle(benchmark, manager, collected):
    """Claim one task and settle it as completed (submitting it is setup, not measured)."""
    epoch = manager.register_worker("w", pid=1, host="bench")

    def submit_one():
        manager.submit([Task(name="demo", args=(0,)).to_json()])

    def cycle():
        (raw,) = manager.claim("w", epoch, 1)
        task = Task.from_json(raw)
        manager.settle("w", epoch, [Outcome(raw=raw, task_id=task.id, name=task.name, ok=True)])

    rounds = 100 if manager.variant == "file" else 1000
    benchmark.pedantic(cycle, setup=submit_one, rounds=rounds, warmup_rounds=5)
    assert manager.get_counter("total_work_completed") == rounds + 5
    _record(benchmark, collected, manager, "claim-to-complete cycle")
