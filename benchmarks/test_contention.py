"""P processes doing the same update cycle against one backend, per implementation.

pytest-benchmark times the whole measurement (start-up included); the figure that
matters is ``extra_info["updates_per_s"]``, summarised with ratios at the end.
"""
from __future__ import annotations

import pytest

from orchestrator_mp import bench

from .conftest import COUNTS


@pytest.mark.parametrize("processes", COUNTS)
@pytest.mark.parametrize("variant", [v.name for v in bench.VARIANTS])
def test_contention(benchmark, plan, collected, tmp_path, variant, processes):
    """Aggregate updates/s of P processes; lock waits and retries for the lock-based variants."""
    benchmark.group = f"contention: {processes} process(es)"
    window = plan.window_s
    row = benchmark.pedantic(bench.contention, args=(variant, processes, window, str(tmp_path)), rounds=1)
    benchmark.extra_info.update(row)
    collected["contention"].append(row)
    assert row["consistent"], row
