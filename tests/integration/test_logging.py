"""Logging as configured in one place: levels from flag or environment, worker id and pid on
every worker line, an optional JSON-lines file, and no print() in library code."""
from __future__ import annotations

import ast
import json
import pathlib
import re

import orchestrator_mp
from tests.helpers import run_cli, run_cli_json

STDERR_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (\w+) +(\S+)\[(\d+)\] ")


def test_worker_lines_carry_worker_id_and_pid_on_stderr_and_in_the_json_file(tmp_path):
    """--log-level DEBUG --log-json FILE: each worker's lines name it and its own pid, in both sinks."""
    run_cli("run", "--workers", "2", "--demo", "40", "--demo-fail-rate", "0.1", "--log-level", "DEBUG",
            "--log-json", "log.jsonl", cwd=tmp_path, check=True)
    pids = {w: int(info["pid"]) for w, info in run_cli_json("status", cwd=tmp_path)["workers"].items()}
    records = [json.loads(line)["record"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    by_worker = {}
    for record in records:
        by_worker.setdefault(record["extra"]["worker_id"], set()).add((record["extra"]["pid"], record["process"]["id"]))
    assert set(pids) <= set(by_worker), by_worker.keys()
    for worker_id, pid in pids.items():
        assert by_worker[worker_id] == {(pid, pid)}  # the pid bound after the fork is the process's own
    assert any("failed" in r["message"] and r["extra"]["worker_id"] in pids for r in records)
    assert {r["level"]["name"] for r in records} >= {"DEBUG"}


def test_log_level_comes_from_the_environment_unless_the_flag_says_otherwise(tmp_path):
    """ORCHESTRATOR_MP_LOG_LEVEL=DEBUG shows worker debug lines; --log-level WARNING hides them."""
    debug = run_cli("run", "--workers", "1", "--demo", "5", cwd=tmp_path, check=True,
                    env={"ORCHESTRATOR_MP_LOG_LEVEL": "DEBUG"})
    worker_lines = [m for m in map(STDERR_LINE.match, debug.stderr.splitlines()) if m and m.group(2) != "main"]
    assert worker_lines and all(m.group(1) == "DEBUG" for m in worker_lines)
    assert all(re.fullmatch(r"\S+:\d+:0", m.group(2)) for m in worker_lines)
    quiet = run_cli("run", "--workers", "1", "--demo", "5", "--log-level", "WARNING", cwd=tmp_path, check=True,
                    env={"ORCHESTRATOR_MP_LOG_LEVEL": "DEBUG"})
    assert not any(STDERR_LINE.match(line) for line in quiet.stderr.splitlines())


def test_task_code_logging_through_loguru_is_stamped_with_its_worker_on_the_command_line(tmp_path):
    """The CLI owns loguru: a task's own logger.info line carries the worker id and pid, as ours do."""
    (tmp_path / "chatty_tasks.py").write_text(
        "from loguru import logger\n"
        "from orchestrator_mp import task\n\n\n"
        "@task(name='chatty')\n"
        "def chatty(x):\n"
        "    logger.info('chatty says {}', x)\n"
        "    return x\n"
    )
    run_cli("enqueue", "chatty", "--args", "[5]", "--count", "2", "--import", "chatty_tasks", cwd=tmp_path, check=True)
    done = run_cli("run", "--workers", "1", "--import", "chatty_tasks", "--demo", "0", "--log-level", "INFO",
                   cwd=tmp_path, check=True)
    lines = [m for m in map(STDERR_LINE.match, done.stderr.splitlines()) if m and "chatty says 5" in m.string]
    assert len(lines) == 2, done.stderr
    assert all(m.group(1) == "INFO" and m.group(2) != "main" for m in lines)


def test_library_code_never_prints():
    """print() appears only in the command line package (its output), never in library modules."""
    package = pathlib.Path(orchestrator_mp.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if path.parent.name == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert offenders == []
