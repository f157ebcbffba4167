"""Charts of a ``bench`` report: throughput against workers for each state implementation.

matplotlib is an optional extra (``pip install 'orchestrator_mp[plot]'``); nothing
else in the package needs it.
"""
from __future__ import annotations

from typing import Any

from .exceptions import ConfigurationError

try:  # optional extra
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    from matplotlib import pyplot
except ImportError:  # pragma: no cover - exercised only without the extra
    pyplot = None  # type: ignore[assignment]  # the module's name stands for "not installed"

STYLE = {
    "lockfree": {"color": "#1b7837", "marker": "o", "label": "lock-free"},
    "locked": {"color": "#b2182b", "marker": "s", "label": "locked (tuned)"},
    "locked-default": {"color": "#ef8a62", "marker": "v", "label": "locked, default policy"},
    "locked-global": {"color": "#762a83", "marker": "^", "label": "locked, global lock"},
    "file": {"color": "#4d4d4d", "marker": "D", "label": "file"},
}


def _series(
    rows: list[dict[str, Any]], name_key: str, count_key: str, value_key: str
) -> dict[str, list[tuple[Any, Any]]]:
    series: dict[str, list[tuple[Any, Any]]] = {}
    for row in rows:
        series.setdefault(row[name_key], []).append((row[count_key], row[value_key]))
    return {name: sorted(points) for name, points in series.items()}


def plot_report(report: dict[str, Any], path: str) -> None:
    """Write a PNG: end-to-end tasks/s and contended updates/s against workers/processes.

    Raises:
        ConfigurationError: matplotlib is not installed, or the report has no rows.
    """
    if pyplot is None:
        raise ConfigurationError("bench --plot needs matplotlib: pip install 'orchestrator_mp[plot]'")
    panels = [
        (report.get("end_to_end", []), "kind", "workers", "tasks_per_s", "end to end (no-op tasks)", "workers", "tasks/s"),
        (report.get("contention", []), "variant", "processes", "updates_per_s", "contention", "processes", "updates/s"),
    ]
    panels = [panel for panel in panels if panel[0]]
    if not panels:
        raise ConfigurationError("the bench report has no rows to plot")
    figure, axes = pyplot.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for axis, (rows, name_key, count_key, value_key, title, xlabel, ylabel) in zip(axes[0], panels, strict=True):
        for name, points in _series(rows, name_key, count_key, value_key).items():
            style = STYLE.get(name, {"label": name})
            counts, values = zip(*points, strict=True)
            axis.plot(counts, values, linewidth=2, **style)
        axis.set_title(title)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted({row[count_key] for row in rows}), labels=[str(c) for c in sorted({row[count_key] for row in rows})])
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    machine = report.get("machine", {})
    figure.suptitle(
        f"orchestrator_mp {report.get('version', '')} bench, {machine.get('cpus', '?')} CPUs "
        f"(ratios are what to read: absolute figures vary by machine)",
        fontsize="medium",
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
