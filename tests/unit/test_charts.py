"""bench --plot draws throughput against workers for each state implementation."""
from __future__ import annotations

import pytest

from orchestrator_mp.charts import plot_report
from orchestrator_mp.exceptions import ConfigurationError

REPORT = {
    "version": "test",
    "machine": {"cpus": 2},
    "end_to_end": [
        {"kind": kind, "workers": workers, "tasks_per_s": rate * workers}
        for kind, rate in (("lockfree", 15000), ("locked", 5000), ("file", 4000))
        for workers in (1, 2, 4, 8)
    ],
    "contention": [
        {"variant": variant, "processes": count, "updates_per_s": rate * count}
        for variant, rate in (("lockfree", 3000), ("locked", 600))
        for count in (1, 2, 4, 8)
    ],
}


def test_plot_writes_a_png(tmp_path):
    """A report becomes a PNG file with both panels."""
    path = tmp_path / "bench.png"
    plot_report(REPORT, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_an_empty_report_is_a_clear_error(tmp_path):
    """Nothing to plot is said, not drawn as an empty figure."""
    with pytest.raises(ConfigurationError, match="no rows"):
        plot_report({"end_to_end": [], "contention": []}, str(tmp_path / "x.png"))
