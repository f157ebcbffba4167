"""Lock-free vs lock-based vs file: the measurements behind ``python -m orchestrator_mp bench``.

::

    contention(variant, P)  P forked processes on one fresh backend, one fixed time window;
        each cycle updates the process's own worker state (versioned, one event) and
        increments one shared counter, as one MULTI/EXEC where the implementation can
        take a ``pipeline`` (lock-free), else as two locked calls (baseline, file)
        → updates/s (all processes), lock wait p50/p99 and retries per acquire (baseline),
          Redis commands per update (INFO commandstats delta); the shared counter must
          equal the cycles the processes report, or the run is marked inconsistent
    end_to_end(kind, N)     ContinuousOrchestrator, N workers, M no-op demo tasks
        → tasks/s from the first submit until drained, commands per task, audit ok
    compare(...)            both for every variant and count, with ratios lockfree / X

Absolute figures depend on the machine; ratios between variants measured in the
same run are what the CI check compares (see :func:`check`).
"""
from __future__ import annotations

import os
import platform
import signal
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import attrs
import multiprocess

from . import __version__
from .config import Settings
from .connection import create_client
from .demo import register_demo
from .exceptions import ConfigurationError
from .figures import percentile
from .orchestrator import ContinuousOrchestrator
from .proc import die_with_parent
from .server import EmbeddedServer
from .state import StateManager, create_state_manager, state_kind

BENCH_COUNTER = "bench_updates"
BASELINE = "locked"  # the variant the CI check compares the lock-free one against


@attrs.frozen
class Variant:
    """One column of the comparison: a registered kind plus constructor options."""

    name: str
    kind: str
    label: str
    options: dict[str, Any] = attrs.field(factory=dict)


VARIANTS: tuple[Variant, ...] = (
    Variant("lockfree", "lockfree", "lock-free (atomic ops)"),
    Variant("locked", "locked", "locked: tuned backoff, per-partition locks"),
    Variant("locked-default", "locked", "locked: DEFAULT POLICY (redis-py sleep=0.1), per-partition",
            {"wait_policy": "default"}),
    Variant("locked-global", "locked", "locked: tuned backoff, ONE GLOBAL LOCK", {"lock_scope": "global"}),
    Variant("file", "file", "file: fcntl lock + fsync (legacy fallback)"),
)
_BY_NAME = {variant.name: variant for variant in VARIANTS}


@attrs.frozen(kw_only=True)
class Plan:
    """What one comparison measures (``quick`` is the CI setting)."""

    variants: tuple[str, ...]
    counts: tuple[int, ...] = (1, 2, 4, 8)
    window_s: float = 3.0
    e2e_tasks: int = 20_000
    e2e_tasks_file: int = 3_000
    end_to_end: bool = True

    @classmethod
    def build(cls, kinds: Sequence[str], counts: Sequence[int], quick: bool) -> "Plan":
        """Variants of the chosen kinds; quick runs skip the default-policy and global
        variants and use short windows and small demo runs."""
        extra = () if quick else ("locked-default", "locked-global")
        chosen = tuple(v.name for v in VARIANTS if v.kind in kinds and (v.name == v.kind or v.name in extra))
        if quick:
            return cls(variants=chosen, counts=tuple(counts), window_s=0.6, e2e_tasks=2_000, e2e_tasks_file=500)
        return cls(variants=chosen, counts=tuple(counts))


def variant(name: str) -> Variant:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigurationError(f"benchmark variant must be one of {', '.join(_BY_NAME)}, got {name!r}") from None


def build_manager(name: str, settings: Settings, url: str | None, **options: Any) -> StateManager:
    """The manager of variant ``name`` (call it in the process that uses it)."""
    chosen = variant(name)
    return create_state_manager(settings.evolve(state=chosen.kind), url, **chosen.options, **options)


def bench_settings(workdir: str, kind: str, **fields: Any) -> Settings:
    values: dict[str, Any] = {"db_path": os.path.join(workdir, "bench.db"), "state": kind, "log_level": "WARNING"}
    values.update(fields)
    return Settings(**values)


@contextmanager
def backend(kind: str, workdir: str) -> Iterator[tuple[Settings, str | None]]:
    """Fresh storage for one measurement: an embedded server, or a state directory."""
    settings = bench_settings(workdir, kind)
    if not state_kind(kind).needs_server:
        yield settings, None
        return
    with EmbeddedServer(settings.db_path, role="bench") as server:
        yield settings, server.url


def command_calls(url: str | None) -> int:
    """Commands the server has run so far (INFO commandstats, without INFO itself)."""
    if url is None:
        return 0
    client = create_client(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info")


# -- contention ----------------------------------------------------------------------------
def update_cycle(state: StateManager, worker_id: str, epoch: int, n: int) -> None:
    """One update: the worker's own state (versioned) plus one shared counter.

    Batched into one MULTI/EXEC when the manager takes a ``pipeline`` it can defer
    (the lock-free one); the others do each call at once, under their locks.
    """
    pipe = state.pipeline()
    state.update_worker_field(worker_id, "current_task", n, epoch=epoch, pipeline=pipe)
    state.increment_counter(BENCH_COUNTER, pipeline=pipe)
    if pipe is not None:
        pipe.execute()


def _contention_child(
    name: str, settings: Settings, url: str | None, worker_id: str, epoch: int, start_at: float, stop_at: float,
    results: Any,
) -> None:
    die_with_parent(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    state = build_manager(name, settings, url, **_sampling(name))
    cycles = 0
    try:
        while time.monotonic() < start_at:
            time.sleep(0.0005)
        while time.monotonic() < stop_at:
            update_cycle(state, worker_id, epoch, cycles)
            cycles += 1
        results.put({"cycles": cycles, "lock": state.lock_stats(), "error": None})
    except Exception as exc:  # reported to the parent, which marks the run inconsistent
        results.put({"cycles": cycles, "lock": None, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        state.close()


def _sampling(name: str) -> dict[str, Any]:
    return {"record_lock_samples": True} if variant(name).kind == "locked" else {}


def contention(name: str, processes: int, window_s: float, workdir: str) -> dict[str, Any]:
    """P processes doing :func:`update_cycle` for ``window_s`` on a fresh backend."""
    chosen = variant(name)
    with backend(chosen.kind, workdir) as (settings, url):
        admin = build_manager(name, settings, url)
        try:
            ids = [f"bench:{i}" for i in range(processes)]
            epochs = {w: admin.register_worker(w, pid=os.getpid(), host="bench") for w in ids}
            before = command_calls(url)
            start_at = time.monotonic() + 0.3 + 0.05 * processes
            stop_at = start_at + window_s
            results = multiprocess.Queue()
            procs = [
                multiprocess.Process(
                    target=_contention_child,
                    args=(name, settings, url, w, epochs[w], start_at, stop_at, results),
                    name=f"bench-{name}-{w}",
                )
                for w in ids
            ]
            for proc in procs:
                proc.start()
            reports = [results.get(timeout=window_s + 120) for _ in procs]
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            calls = command_calls(url) - before
            counter = admin.get_counter(BENCH_COUNTER)
        finally:
            admin.close()
    cycles = sum(r["cycles"] for r in reports)
    errors = [r["error"] for r in reports if r["error"]]
    row: dict[str, Any] = {
        "variant": name,
        "kind": chosen.kind,
        "processes": processes,
        "window_s": window_s,
        "cycles": cycles,
        "updates_per_s": cycles / window_s,
        "consistent": not errors and counter == cycles,
        "errors": errors,
        "commands_per_update": (calls / cycles) if url and cycles else None,
    }
    locks = [r["lock"] for r in reports if r["lock"]]
    if locks:
        waits = [w for lock in locks for w in lock["waits"]]
        acquires = sum(lock["acquires"] for lock in locks)
        attempts = sum(lock["attempts"] for lock in locks)
        row.update(
            lock_acquires=acquires,
            lock_wait_p50_ms=percentile(sorted(waits), 50) * 1000,
            lock_wait_p99_ms=percentile(sorted(waits), 99) * 1000,
            retries_per_acquire=(attempts - acquires) / acquires if acquires else 0.0,
            lost_leases=sum(lock["lost_leases"] for lock in locks),
        )
    return row


# -- end to end ------------------------------------------------------------------------------
def end_to_end(kind: str, workers: int, tasks: int, workdir: str) -> dict[str, Any]:
    """A no-op demo run: ``tasks`` tasks on ``workers`` workers, from first submit to drained."""
    demo = register_demo()
    settings = bench_settings(workdir, kind, workers=workers, shutdown_timeout_s=30.0)
    with ContinuousOrchestrator(settings=settings) as orch:
        before = command_calls(orch.url)
        started = time.perf_counter()
        for start in range(0, tasks, 10_000):
            orch.submit_many(demo, [((i, 0.0, 0.0), {}) for i in range(start, min(tasks, start + 10_000))])
        drained = orch.wait(timeout=600)
        elapsed = time.perf_counter() - started
        calls = command_calls(orch.url) - before
        audit = orch.audit()
    completed = audit["counters"]["total_work_completed"]
    return {
        "kind": kind,
        "workers": workers,
        "tasks": tasks,
        "elapsed_s": elapsed,
        "tasks_per_s": completed / elapsed if elapsed > 0 else 0.0,
        "consistent": drained and audit["ok"] and completed == tasks,
        "commands_per_task": (calls / tasks) if orch.url else None,
    }


# -- the comparison ------------------------------------------------------------------------------
def compare(plan: Plan, progress: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    """Run every measurement of ``plan``; returns the report (see :func:`render`)."""
    report: dict[str, Any] = {
        "version": __version__,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "plan": attrs.asdict(plan),
        "variants": {name: variant(name).label for name in plan.variants},
        "contention": [],
        "end_to_end": [],
    }
    with tempfile.TemporaryDirectory(prefix="orchestrator_mp-bench-") as root:
        for processes in plan.counts:
            for name in plan.variants:
                with tempfile.TemporaryDirectory(dir=root) as workdir:
                    row = contention(name, processes, plan.window_s, workdir)
                report["contention"].append(row)
                progress(f"contention {name:<15} P={processes}: {row['updates_per_s']:>10,.0f} updates/s")
        kinds = [name for name in plan.variants if variant(name).name == variant(name).kind]
        for workers in plan.counts if plan.end_to_end else ():
            for kind in kinds:
                tasks = plan.e2e_tasks_file if not state_kind(kind).needs_server else plan.e2e_tasks
                with tempfile.TemporaryDirectory(dir=root) as workdir:
                    row = end_to_end(kind, workers, tasks, workdir)
                report["end_to_end"].append(row)
                progress(f"end to end {kind:<15} N={workers}: {row['tasks_per_s']:>10,.0f} tasks/s")
    report["ratios"] = ratios(report)
    return report


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """lockfree / X for every other variant, per process count (and per worker count)."""
    out: dict[str, Any] = {"contention": {}, "end_to_end": {}}
    for section, key, value in (("contention", "variant", "updates_per_s"), ("end_to_end", "kind", "tasks_per_s")):
        count_key = "processes" if section == "contention" else "workers"
        table: dict[int, dict[str, float]] = {}
        for row in report[section]:
            table.setdefault(row[count_key], {})[row[key]] = row[value]
        for count, values in table.items():
            base = values.get("lockfree")
            if not base:
                continue
            out[section][str(count)] = {
                other: base / rate for other, rate in values.items() if other != "lockfree" and rate > 0
            }
    return out


def check(report: dict[str, Any], min_ratio: float) -> tuple[bool, str]:
    """The CI throughput check: lock-free / tuned lock-based updates/s at the highest
    process count must be at least ``min_ratio``, and every run consistent."""
    counts = [row["processes"] for row in report["contention"]]
    if not counts:
        return False, "no contention measurements"
    top = str(max(counts))
    ratio = report["ratios"]["contention"].get(top, {}).get(BASELINE)
    if ratio is None:
        return False, f"--check needs both lockfree and {BASELINE} measured"
    broken = [row for row in report["contention"] + report["end_to_end"] if not row["consistent"]]
    if broken:
        return False, f"{len(broken)} measurement(s) inconsistent: {broken[0]}"
    verdict = "ok" if ratio >= min_ratio else "FAILED"
    message = f"check {verdict}: lockfree/{BASELINE} at {top} processes = {ratio:.2f}x (minimum {min_ratio:.2f}x)"
    return ratio >= min_ratio, message


# -- the table ---------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def render(report: dict[str, Any]) -> str:
    """The comparison as text tables: rates, ratios, lock waits, commands per task."""
    lines: list[str] = []
    names = list(report["variants"])
    plan = report["plan"]
    lines.append(
        f"orchestrator_mp {report['version']} bench: {report['machine']['cpus']} CPUs, "
        f"Python {report['machine']['python']}"
    )
    lines.append("")
    lines.append(f"Contention: P processes, one server, {plan['window_s']:g}s window; one update = own worker "
                 "state + shared counter (updates/s)")
    for name in names:
        lines.append(f"  {name:<15} {report['variants'][name]}")
    others = [n for n in names if n != "lockfree"]
    width = {n: max(10, len(n) + 5) for n in others}
    header = f"{'P':>3} " + "".join(f"{n:>15}" for n in names)
    if "lockfree" in names:
        header += "".join(f"{'lf/' + n:>{width[n]}}" for n in others)
    lines.append(header)
    by = {(r["variant"], r["processes"]): r for r in report["contention"]}
    counts = sorted({r["processes"] for r in report["contention"]})
    for count in counts:
        cells = "".join(f"{_fmt(by.get((n, count), {}).get('updates_per_s')):>15}" for n in names)
        if "lockfree" in names:
            cells += "".join(
                f"{_fmt(report['ratios']['contention'].get(str(count), {}).get(n), '.1f') + 'x':>{width[n]}}"
                for n in others
            )
        lines.append(f"{count:>3} {cells}")
    locked = [n for n in names if variant(n).kind == "locked"]
    if locked:
        lines.append("")
        lines.append("Lock waits (acquire start to held, ms) and retries per acquire")
        lines.append(f"{'P':>3} {'variant':<15} {'p50 ms':>9} {'p99 ms':>9} {'retries':>9} {'lost leases':>12}")
        for count in counts:
            for n in locked:
                r = by.get((n, count), {})
                p50 = _fmt(r.get("lock_wait_p50_ms"), ".3f")
                p99 = _fmt(r.get("lock_wait_p99_ms"), ".3f")
                retries = _fmt(r.get("retries_per_acquire"), ".2f")
                lines.append(f"{count:>3} {n:<15} {p50:>9} {p99:>9} {retries:>9} {r.get('lost_leases', 0):>12}")
    redis_names = [n for n in names if any(by.get((n, c), {}).get("commands_per_update") for c in counts)]
    if redis_names:
        lines.append("")
        lines.append("Redis commands per update (INFO commandstats, commands inside scripts included)")
        for n in redis_names:
            per = [_fmt(by.get((n, c), {}).get("commands_per_update"), ".1f") for c in counts]
            lines.append(f"  {n:<15} " + "  ".join(f"P={c}: {p}" for c, p in zip(counts, per, strict=True)))
    if report["end_to_end"]:
        lines.extend(_render_end_to_end(report))
    bad = [r for r in report["contention"] + report["end_to_end"] if not r["consistent"]]
    lines.append("")
    lines.append("all runs consistent" if not bad else f"INCONSISTENT runs: {len(bad)}")
    return "\n".join(lines)


def _render_end_to_end(report: dict[str, Any]) -> list[str]:
    kinds = list(dict.fromkeys(r["kind"] for r in report["end_to_end"]))
    plan = report["plan"]
    by = {(r["kind"], r["workers"]): r for r in report["end_to_end"]}
    others = [k for k in kinds if k != "lockfree"]
    lines = ["", f"End to end: no-op demo tasks ({plan['e2e_tasks']:,}; file: {plan['e2e_tasks_file']:,}), "
             "batch 16 (tasks/s; Redis commands per task)"]
    header = f"{'N':>3} " + "".join(f"{k:>15}" for k in kinds)
    if "lockfree" in kinds:
        header += "".join(f"{'lf/' + k:>12}" for k in others)
    header += "".join(f"{'cmd/task ' + k:>20}" for k in kinds if k != "file")
    lines.append(header)
    for count in sorted({r["workers"] for r in report["end_to_end"]}):
        cells = "".join(f"{_fmt(by.get((k, count), {}).get('tasks_per_s')):>15}" for k in kinds)
        if "lockfree" in kinds:
            cells += "".join(
                f"{_fmt(report['ratios']['end_to_end'].get(str(count), {}).get(k), '.2f') + 'x':>12}" for k in others
            )
        cells += "".join(
            f"{_fmt(by.get((k, count), {}).get('commands_per_task'), '.2f'):>20}" for k in kinds if k != "file"
        )
        lines.append(f"{count:>3} {cells}")
    return lines
