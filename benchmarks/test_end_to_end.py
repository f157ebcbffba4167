"""No-op demo runs at 1, 2, 4 and 8 workers per implementation (tasks/s)."""
from __future__ import annotations

import pytest

from orchestrator_mp import bench

from .conftest import COUNTS


@pytest.mark.parametrize("workers", COUNTS)
@pytest.mark.parametrize("kind", ["lockfree", "locked", "file"])
def test_end_to_end(benchmark, plan, collected, tmp_path, kind, workers):
    """Submit the demo tasks, wait until drained; tasks/s and Redis commands per task."""
    benchmark.group = f"end to end: {workers} worker(s)"
    tasks = plan.e2e_tasks_file if kind == "file" else plan.e2e_tasks
    row = benchmark.pedantic(bench.end_to_end, args=(kind, workers, tasks, str(tmp_path)), rounds=1)
    benchmark.extra_info.update(row)
    collected["end_to_end"].append(row)
    assert row["consistent"], row
