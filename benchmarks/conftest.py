"""Fixtures and the closing ratio tables of the pytest-benchmark suites.

    pytest benchmarks --benchmark-only                 # everything (tox -e bench)
    pytest benchmarks --benchmark-only --bench-quick   # short windows, small runs

Micro benchmarks are timed by pytest-benchmark itself (one group per operation,
every implementation in the group). Contention and end-to-end runs measure a rate
over a window (``orchestrator_mp.bench``); their rows go to ``extra_info`` (and so
to ``--benchmark-json``), and the session ends with the same tables as
``python -m orchestrator_mp bench``, saved as JSON beside pytest-benchmark's.
"""
from __future__ import annotations

import json
import os

import pytest

from orchestrator_mp import bench
from orchestrator_mp.log import configure
from orchestrator_mp.server import EmbeddedServer

MICRO_VARIANTS = ("lockfree", "locked", "locked-global", "file")
COUNTS = (1, 2, 4, 8)
_COLLECTED: dict = {"micro": {}, "contention": [], "end_to_end": []}


def pytest_addoption(parser):
    parser.addoption("--bench-quick", action="store_true", help="short windows and small demo runs")
    parser.addoption("--bench-report", default=".benchmarks/comparison.json", help="where the ratio report goes")


@pytest.fixture(scope="session", autouse=True)
def quiet_logs():
    configure("WARNING")


@pytest.fixture(scope="session")
def plan(request):
    """The same Plan as ``bench`` (every variant; quick or full windows)."""
    return bench.Plan.build(("lockfree", "locked", "file"), COUNTS, quick=request.config.getoption("--bench-quick"))


@pytest.fixture
def collected():
    return _COLLECTED


@pytest.fixture(params=MICRO_VARIANTS)
def manager(request, tmp_path):
    """A manager of one variant on fresh storage (its own server when it needs one)."""
    name = request.param
    kind = bench.variant(name).kind
    settings = bench.bench_settings(str(tmp_path), kind)
    server = EmbeddedServer(settings.db_path).start() if bench.state_kind(kind).needs_server else None
    state = bench.build_manager(name, settings, server.url if server else None)
    state.variant = name
    yield state
    state.close()
    if server is not None:
        server.stop()


def pytest_terminal_summary(terminalreporter):
    if not (_COLLECTED["micro"] or _COLLECTED["contention"] or _COLLECTED["end_to_end"]):
        return
    write = terminalreporter.write_line
    write("")
    if _COLLECTED["micro"]:
        write("Micro benchmarks: mean time per call (us) and the lock-free speed-up")
        for group, means in sorted(_COLLECTED["micro"].items()):
            base = means.get("lockfree")
            cells = "  ".join(
                f"{name} {mean * 1e6:,.0f}" + (f" (lf x{mean / base:.1f})" if base and name != "lockfree" else "")
                for name, mean in means.items()
            )
            write(f"  {group:<32} {cells}")
    if _COLLECTED["contention"] or _COLLECTED["end_to_end"]:
        report = _as_report(terminalreporter.config)
        write("")
        for line in bench.render(report).splitlines():
            write(line)
        path = terminalreporter.config.getoption("--bench-report")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        write(f"ratio report saved to {path}")


def _as_report(config) -> dict:
    rows = _COLLECTED["contention"]
    names = [v.name for v in bench.VARIANTS if any(r["variant"] == v.name for r in rows)]
    counts = sorted({r["processes"] for r in rows} | {r["workers"] for r in _COLLECTED["end_to_end"]})
    quick = config.getoption("--bench-quick")
    plan = bench.Plan.build(("lockfree", "locked", "file"), tuple(counts), quick=quick)
    report = {
        "version": bench.__version__,
        "machine": {"cpus": os.cpu_count(), "python": bench.platform.python_version()},
        "plan": {**bench.attrs.asdict(plan), "counts": counts},
        "variants": {name: bench.variant(name).label for name in names},
        "contention": rows,
        "end_to_end": _COLLECTED["end_to_end"],
        "micro": {group: means for group, means in _COLLECTED["micro"].items()},
    }
    report["ratios"] = bench.ratios(report)
    return report
