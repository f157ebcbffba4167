"""A library is a guest (issue 14 §5, STYLE rule 19): importing and using orchestrator_mp
leaves the application's loguru setup and task registry as the application made them.

Each case runs as its own program, so the import under test is the first one."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# An application: sets loguru up its own way (MODE), records loguru's global state,
# imports the package, runs a ContinuousOrchestrator and an Executor with a task of its
# own, and prints what changed as JSON.
APPLICATION = textwrap.dedent(
    """
    import json, sys
    from loguru import logger

    mode, log_file = sys.argv[1], sys.argv[2]
    if mode in ("own", "enabled"):
        logger.remove()
        logger.add(sys.stderr, format="APP {message}", level="DEBUG")
        logger.add(log_file, level="DEBUG", serialize=True)

    def snapshot():
        core = logger._core  # loguru keeps no public view of its handlers
        return {
            "handlers": {str(i): id(h) for i, h in core.handlers.items()},
            "extra": repr(core.extra),
            "patcher": repr(core.patcher),
            "levels": sorted(core.levels),
        }

    before = snapshot()
    import orchestrator_mp
    from orchestrator_mp import ContinuousOrchestrator, OrchestratorExecutor, registered_names, task
    after_import, names_after_import = snapshot(), registered_names()
    if mode == "enabled":
        logger.enable("orchestrator_mp")

    @task(name="guest.double")
    def double(x):
        logger.info("task code logs {}", x)
        return 2 * x

    with ContinuousOrchestrator(max_workers=2, db="orch.db", shutdown_timeout_s=10.0) as orch:
        handles = orch.submit_many("guest.double", [(i,) for i in range(20)])
        assert orch.wait(timeout=60)
        results = [h.result(timeout=30) for h in handles]
    with OrchestratorExecutor(max_workers=2, db="executor.db") as executor:
        mapped = list(executor.map(double, range(10), chunksize=3))
    print(json.dumps({
        "before": before, "after_import": after_import, "after_use": snapshot(),
        "names_after_import": names_after_import, "names_after_use": registered_names(),
        "results": results, "mapped": mapped,
    }))
    """
)


def _run_application(tmp_path, mode: str) -> tuple[dict, str, list[dict]]:
    script = tmp_path / "application.py"
    script.write_text(APPLICATION)
    log_file = tmp_path / "app.jsonl"
    done = subprocess.run(
        [sys.executable, str(script), mode, str(log_file)], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line)["record"] for line in log_file.read_text().splitlines()] if log_file.exists() else []
    return json.loads(done.stdout), done.stderr, records


@pytest.mark.parametrize("mode", ["own", "default"])
def test_the_applications_loguru_setup_is_untouched_by_import_and_use(tmp_path, mode):
    """Own sinks (default removed) or loguru's default: the same handlers, extra and patcher
    after importing the package and running tasks; no library line reaches them."""
    report, stderr, records = _run_application(tmp_path, mode)
    assert report["results"] == [2 * i for i in range(20)] and report["mapped"] == [2 * i for i in range(10)]
    assert report["after_import"] == report["before"]
    assert report["after_use"] == report["before"]
    assert list(report["before"]["handlers"]) == (["1", "2"] if mode == "own" else ["0"])
    # Forked workers log through the application's sinks: its task code's lines appear...
    assert "task code logs" in stderr
    # ...the library's do not (disabled until the application enables them).
    assert not any(r["name"].startswith("orchestrator_mp") for r in records)
    assert "started worker" not in stderr and "worker started" not in stderr
    if mode == "own":
        assert all(line.startswith("APP ") for line in stderr.splitlines()), stderr


def test_an_application_that_enables_the_library_gets_its_lines_from_every_process(tmp_path):
    """logger.enable("orchestrator_mp"): library lines reach the application's own sinks, from
    the parent ("main") and from each worker (its id and pid in extra), sinks unchanged."""
    report, _stderr, records = _run_application(tmp_path, "enabled")
    assert report["after_use"] == report["before"]
    ours = [r for r in records if r["name"].startswith("orchestrator_mp")]
    by_role = {r["extra"]["worker_id"] for r in ours}
    assert "main" in by_role and len(by_role) > 1, by_role
    for record in ours:
        assert record["extra"]["pid"] == record["process"]["id"]
    task_lines = [r for r in records if r["message"].startswith("task code logs")]
    assert task_lines and "worker_id" not in task_lines[0]["extra"]  # the application's records are its own


def test_importing_the_package_registers_no_task(tmp_path):
    """After a bare import (and after using the library) the registry holds only what the
    application registered: no demo task, no executor helper."""
    report, _stderr, _records = _run_application(tmp_path, "default")
    assert report["names_after_import"] == []
    assert report["names_after_use"] == ["guest.double"]
