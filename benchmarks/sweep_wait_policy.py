"""How the baseline's tuned wait policy was chosen (run by hand, not collected by pytest).

    python benchmarks/sweep_wait_policy.py [WINDOW_S] [REPEATS] [COUNTS]

Runs the contention benchmark of the lock-based baseline under several backoff
shapes (all starting at 0.5 ms) and the library's default, interleaved, and prints
the median updates/s, its range and the median p99 lock wait. The winner became
``orchestrator_mp.state.locks.TUNED``; rerun this on other hardware before
comparing there.
"""
from __future__ import annotations

import statistics
import sys
import tempfile

from orchestrator_mp import bench
from orchestrator_mp.log import configure
from orchestrator_mp.state import locks

SHAPES = {
    "x2 cap 8ms, half jitter": dict(factor=2, cap_s=0.008, jitter=0.5),
    "x4 cap 50ms, half jitter": dict(factor=4, cap_s=0.05, jitter=0.5),
    "x4 cap 100ms, half jitter": dict(factor=4, cap_s=0.1, jitter=0.5),
    "x8 cap 100ms, half jitter": dict(factor=8, cap_s=0.1, jitter=0.5),
    "x2 cap 100ms, full jitter": dict(factor=2, cap_s=0.1, jitter=1.0),
    "x4 cap 100ms, full jitter": dict(factor=4, cap_s=0.1, jitter=1.0),
    "library default (sleep 0.1)": None,
}


def main(window_s: float = 2.0, repeats: int = 3, counts: tuple[int, ...] = (4, 8)) -> None:
    configure("WARNING")
    results: dict[tuple[str, int], list[dict]] = {}
    for _ in range(repeats):
        for label, shape in SHAPES.items():
            if shape is not None:  # children are forked after this, so they see it
                locks.WAIT_POLICIES["tuned"] = locks.WaitPolicy("tuned", **shape)
            name = "locked" if shape is not None else "locked-default"
            for count in counts:
                with tempfile.TemporaryDirectory() as workdir:
                    results.setdefault((label, count), []).append(bench.contention(name, count, window_s, workdir))
    for label in SHAPES:
        cells = []
        for count in counts:
            rates = [r["updates_per_s"] for r in results[(label, count)]]
            p99 = statistics.median(r["lock_wait_p99_ms"] for r in results[(label, count)])
            cells.append(
                f"P={count} {statistics.median(rates):6.0f}/s [{min(rates):5.0f}-{max(rates):5.0f}] p99 {p99:6.1f} ms"
            )
        print(f"{label:<28} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        float(args[0]) if args else 2.0,
        int(args[1]) if len(args) > 1 else 3,
        tuple(int(c) for c in args[2].split(",")) if len(args) > 2 else (4, 8),
    )
