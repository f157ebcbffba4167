"""Every shell command and Python example in the README and in docs/, run as a user would.

The documents are the README and every page of the MkDocs site (docs/content/*.md).
Each document runs in its own fresh directory, as a reader would try one page. Shell
blocks (```sh) run block by block, command by command, in the document's order,
through bash, with `python` being this interpreter; Python blocks (```python) run in
order, in a directory of their own. What differs from the documents, and why, is
listed here and nowhere else (one list for all documents; every entry must still
appear in one of them):

* NOT_RUN: commands this suite cannot run from inside itself; each gets a check instead.
* SKIPPED_PREFIXES: an installation step this environment has already done; the rest
  of the line runs.
* SUBSTITUTIONS: a shorter demo where a document's is long, a free port, and
  `--collect-only` on the README's fast-part pytest line (the suite cannot run
  itself; collecting proves the marker expression selects tests).
* IN_PROJECT: commands about the checkout itself (pytest) run in the project directory.
* A docs page's shell block identical to one of the README's (the quick start on the
  docs' home page) is not run twice: the README's run covers it.
* LONG_RUNNING: commands that run until Ctrl-C. Each is started, checked for what it
  should show, and stopped by PID with SIGINT (expecting exit 0). Watchers (which
  never hold the database) start before their block's other commands, as a user opens
  terminal 2 while terminal 1 runs; a serving `run` starts at its place. A watcher with
  nothing to watch by the end of its block gets a serving run and 200 enqueued tasks.

Any other command runs to completion and must exit 0; a new long-running command
must be added to LONG_RUNNING or this test times out naming it.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Callable

import attrs
import pytest

from tests.helpers import LineReader, run_cli, run_cli_json, wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DOCUMENTS = (README, *sorted((DOCS / "content").glob("*.md")))
README_MAX_BYTES = 15_000  # the front door stays a few screens (issue 14 §7); the reference is docs/
FINITE_TIMEOUT_S = 180
DOCS_BUILD = "python -m mkdocs build --strict -f docs/mkdocs.yml --site-dir /tmp/orchestrator_mp-site"

NOT_RUN = {
    "pip install -e '.[test]' && pytest": "the suite cannot run itself; .ci/run runs exactly this line",
    "tox -e tests | tox -e faults | tox -e bench": "tox is not a test dependency; tox.ini must define the three",
    "pip install -e '.[test]'": "installing is .ci/run's job: it installs exactly this before testing",
    "python -m orchestrator_mp bench": "about 1.5 minutes of measurements; test_cli runs the same code quickly",
    "python -m orchestrator_mp bench --quick": ".ci/run runs it (with --check); test_cli runs it on 1 and 2 workers",
    "tox -e bench": "tox is not a test dependency; tox.ini must define it",
    "python benchmarks/sweep_wait_policy.py": "minutes of measurements; the script must exist",
    "python -m orchestrator_mp worker --redis-url redis://:PASSWORD@HOST:6379/0 --workers 4 --import myproject.tasks": (
        "needs a server on another host; tests/integration/test_external.py runs `worker --redis-url` for real"
    ),
    "redis-server --port 7000 --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes-7000.conf "
    "--daemonize yes": "fixed ports and daemons outlive the suite; tests/cluster.py starts nodes with these options",
    "redis-cli --cluster create 127.0.0.1:7000 127.0.0.1:7001 127.0.0.1:7002 --cluster-replicas 0 --cluster-yes": (
        "needs the three nodes above; tests/cluster.py runs this create"
    ),
    "python -m orchestrator_mp run --redis-url redis://127.0.0.1:7000/0 --workers 2 --demo 20000 --demo-ms 1": (
        "needs the cluster above; test_external runs `run --redis-url` plus `worker` commands on a real cluster"
    ),
    "python -m orchestrator_mp worker --redis-url redis://127.0.0.1:7000/0 --workers 2": (
        "needs the cluster above; test_external runs `worker --redis-url` on a real cluster"
    ),
    "pip install -e '.[peers]'": "the peer packages are an optional extra CI does not install; setup.cfg must define it",
    "python -m benchmarks.peers": "the full run takes about 20 minutes; `--list` runs here, and "
    "tests/integration/test_peers_runner.py runs it on a small workload",
    "pip install -e '.[docs]'": "the docs extra is not a test dependency; .ci/run installs it; setup.cfg must define it",
    DOCS_BUILD: ".ci/run runs the same strict build; docs/mkdocs.yml must list every page",
}
SKIPPED_PREFIXES = ("pip install -e . && ",)
SUBSTITUTIONS = (
    ("--demo 20000 --demo-ms 1", "--demo 1000 --demo-ms 1"),
    ('pytest -m "not slow"', 'pytest -m "not slow" --collect-only -q'),
)
IN_PROJECT = ("pytest ",)
LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (events|metrics|workers|errors|completions) +\S+ ")


@attrs.frozen
class LongRunning:
    watcher: bool  # attaches only (never holds the database): may start before the block's other commands
    ready: Callable[["Background"], bool]  # true once it shows what it should
    needs_activity: bool = False  # true: give it a serving run with work if it saw nothing


def _has(stream: str, needle: str) -> Callable[["Background"], bool]:
    return lambda bg: needle in getattr(bg, stream).text()


def _monitor_lines(bg: "Background") -> bool:
    return any(LINE.match(line) for line in bg.out.lines)


def _json_lines_of_worker_0(bg: "Background") -> bool:
    entries = [json.loads(line) for line in bg.out.lines]
    return bool(entries) and all(e["fields"]["worker"].endswith(":0") for e in entries)


METRICS_COMMAND = "python -m orchestrator_mp metrics --port 9808"
LONG_RUNNING = {
    "python -m orchestrator_mp run --workers 4": LongRunning(False, _has("err", "serving the queue")),
    "python -m orchestrator_mp run --workers 2": LongRunning(False, _has("err", "serving the queue")),
    "python -m orchestrator_mp status --watch": LongRunning(True, _has("out", "active workers: "), True),
    "python -m orchestrator_mp status --watch --interval 2": LongRunning(True, _has("out", "active workers: "), True),
    "python -m orchestrator_mp monitor": LongRunning(True, _monitor_lines, True),
    "python -m orchestrator_mp monitor --stream completions --worker '*:0' --json": LongRunning(
        True, _json_lines_of_worker_0, True
    ),
    METRICS_COMMAND: LongRunning(True, _has("err", "serving Prometheus metrics on")),
}


def shell_commands(text: str) -> list[list[str]]:
    """The commands of each ```sh block, comments removed."""
    blocks = []
    for block in re.findall(r"^ *```sh\n(.*?)^ *```", text, re.M | re.S):
        commands = [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines()]
        blocks.append([c for c in commands if c and not c.startswith("#")])
    return blocks


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Background:
    """A long-running documented command, ended by PID."""

    def __init__(self, command: str, cwd: pathlib.Path, env: dict[str, str]) -> None:
        self.command = command
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=cwd, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.out = LineReader(self.proc.stdout)
        self.err = LineReader(self.proc.stderr)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.command!r} did not stop on SIGINT") from None


def _environment() -> dict[str, str]:
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "ORCHESTRATOR_MP_LOG_LEVEL": "WARNING"}


def _prepare(command: str, port: int) -> str:
    for prefix in SKIPPED_PREFIXES:
        command = command.removeprefix(prefix)
    for old, new in SUBSTITUTIONS:
        command = command.replace(old, new)
    return command.replace("9808", str(port))


def _check_not_run(command: str) -> None:
    if command.startswith("pip install -e '.[test]' && pytest"):
        ci = (ROOT / ".ci" / "run").read_text()
        pattern = re.search(r'grep -m1 -E "([^"]+)" README\.md', ci).group(1)
        assert re.match(pattern, command), ".ci/run must find the README's test command"
    elif command.startswith("tox "):
        tox = (ROOT / "tox.ini").read_text()
        for env in re.findall(r"tox -e (\w+)", command):
            assert f"[testenv:{env}]" in tox, env
    elif command == "pip install -e '.[test]'":
        assert command in (ROOT / "README.md").read_text().splitlines()[2]
    elif command.startswith("python -m orchestrator_mp bench"):
        assert "python -m orchestrator_mp bench --quick --check" in (ROOT / ".ci" / "run").read_text()
    elif command.startswith("python benchmarks/"):
        assert (ROOT / command.split()[1]).is_file(), command
    elif " worker --redis-url " in command or " run --redis-url " in command:
        external = (ROOT / "tests" / "integration" / "test_external.py").read_text()
        helpers = (ROOT / "tests" / "helpers.py").read_text()
        assert '"worker", "--redis-url"' in helpers and "start_worker_command(" in external
        assert '"run", "--redis-url"' in external
        assert '@pytest.fixture(params=["server", "cluster"])' in external
    elif command.startswith(("redis-server ", "redis-cli --cluster create")):
        starter = (ROOT / "tests" / "cluster.py").read_text()
        for option in re.findall(r"(--[a-z-]+)", command):
            assert f'"{option}"' in starter, option
    elif command == "pip install -e '.[peers]'":
        extra = re.search(r"^peers =\n((?:[ \t]+\S.*\n)+)", (ROOT / "setup.cfg").read_text(), re.M)
        assert extra, "setup.cfg must define the peers extra"
        for package in ("celery[redis]", "rq", "dramatiq[redis]", "huey"):
            assert package in extra.group(1), package
    elif command == "pip install -e '.[docs]'":
        extra = re.search(r"^docs =\n((?:[ \t]+\S.*\n)+)", (ROOT / "setup.cfg").read_text(), re.M)
        assert extra, "setup.cfg must define the docs extra"
        for package in ("mkdocs>=", "mkdocs-material>="):
            assert package in extra.group(1), package
        ci = (ROOT / ".ci" / "run").read_text()
        assert re.search(r"^python -m pip install .*-e '\.\[docs\]'$", ci, re.M), ".ci/run must install the docs extra"
    elif command == DOCS_BUILD:
        assert "mkdocs build --strict -f docs/mkdocs.yml" in (ROOT / ".ci" / "run").read_text()
        config = (DOCS / "mkdocs.yml").read_text()
        assert re.search(r"^strict: true$", config, re.M) and re.search(r"^  omitted_files: warn$", config, re.M)
        pages = {page.name for page in (DOCS / "content").glob("*.md")}
        assert set(re.findall(r"^ +- (?:[^:\n]+: )?(\S+\.md)$", config, re.M)) == pages, "nav must list every page"
    elif command == "python -m benchmarks.peers":
        listed = subprocess.run([sys.executable, "-m", "benchmarks.peers", "--list"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0 and "orchestrator_mp" in listed.stdout, listed.stderr


def test_readme_keeps_its_first_two_lines():
    """The README opens with the two set-up commands, exactly (.ci/run greps the second)."""
    assert README.read_text().splitlines()[:3] == [
        "```sh",
        "pip install -e . && python -m orchestrator_mp run --demo 10000",
        "pip install -e '.[test]' && pytest",
    ]


def test_readme_is_a_front_door():
    """The README stays under 15 KB and its relative links lead to files that exist (docs/ pages mostly)."""
    text = README.read_text()
    assert len(text.encode()) < README_MAX_BYTES, "move reference material into docs/content/"
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert any(link.startswith("docs/content/") for link in links), links
    for link in links:
        if not re.match(r"[a-z]+://", link):
            assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_every_exception_is_still_in_a_document():
    """Each NOT_RUN and LONG_RUNNING entry names a command some document still shows (no stale exceptions)."""
    commands = {c for doc in DOCUMENTS for block in shell_commands(doc.read_text()) for c in block}
    assert len(commands) >= 30 and sum(len(python_blocks(doc.read_text())) for doc in DOCUMENTS) >= 6
    assert not (set(NOT_RUN) | set(LONG_RUNNING)) - commands, (set(NOT_RUN) | set(LONG_RUNNING)) - commands


def _shell_blocks_to_run(document: pathlib.Path) -> list[list[str]]:
    """The document's shell blocks, less those copied verbatim from the README (they ran there)."""
    blocks = shell_commands(document.read_text())
    if document == README:
        return blocks
    return [block for block in blocks if block not in shell_commands(README.read_text())]


def _documents_with(blocks: Callable[[pathlib.Path], list]) -> list:
    return [pytest.param(doc, id=str(doc.relative_to(ROOT))) for doc in DOCUMENTS if blocks(doc)]


@pytest.mark.slow
@pytest.mark.parametrize("document", _documents_with(_shell_blocks_to_run))
def test_every_shell_command_works(document, tmp_path):
    """Each ```sh command of a document runs (or, for the listed exceptions, is checked) in the document's order."""
    env = _environment()
    port = free_port()
    blocks = _shell_blocks_to_run(document)
    if any("curl " in command for block in blocks for command in block):
        assert shutil.which("curl"), f"{document.name}'s metrics example uses curl"
    ran = []
    for block in blocks:
        background: list[tuple[Background, LongRunning]] = []
        try:
            watchers = [c for c in block if c in LONG_RUNNING and LONG_RUNNING[c].watcher]
            for command in watchers:
                background.append((Background(_prepare(command, port), tmp_path, env), LONG_RUNNING[command]))
            for command in block:
                if command in NOT_RUN:
                    _check_not_run(command)
                elif command in LONG_RUNNING:
                    if not LONG_RUNNING[command].watcher:
                        bg = Background(_prepare(command, port), tmp_path, env)
                        background.append((bg, LONG_RUNNING[command]))
                        spec = LONG_RUNNING[command]
                        wait_for(lambda bg=bg, spec=spec: spec.ready(bg) or bg.proc.poll() is not None,
                                 timeout=60, what=f"{command!r} to be ready")
                else:
                    prepared = _prepare(command, port)
                    for bg, spec in background:
                        if spec is LONG_RUNNING[METRICS_COMMAND] and "127.0.0.1:9808" in command:
                            # A scrape needs the server listening: wait for that, not a moment.
                            wait_for(lambda bg=bg, spec=spec: spec.ready(bg) or bg.proc.poll() is not None,
                                     timeout=60, what="the metrics server to listen")
                    try:
                        cwd = ROOT if prepared.startswith(IN_PROJECT) else tmp_path
                        result = subprocess.run(["bash", "-c", prepared], cwd=cwd, env=env, text=True,
                                                capture_output=True, timeout=FINITE_TIMEOUT_S)
                    except subprocess.TimeoutExpired:
                        raise AssertionError(f"{command!r} ran over {FINITE_TIMEOUT_S}s: is it long-running?") from None
                    assert result.returncode == 0, f"{document.name}: {prepared}\n{result.stdout}\n{result.stderr}"
                    _check_output(command, result.stdout)
                ran.append(command)
            _check_background(background, tmp_path, env)
        finally:
            for bg, _spec in reversed(background):
                code = bg.stop()
                assert code == 0, f"{bg.command!r} exited {code} on SIGINT:\n{bg.err.text()}"
    assert len(ran) == sum(len(b) for b in blocks)


def _check_output(command: str, stdout: str) -> None:
    """What a finite command printed, where its document shows or promises it."""
    if command.startswith("curl "):
        assert "orchestrator_mp_up 1.0" in stdout and "orchestrator_mp_work_completed_total " in stdout, stdout
    elif "--json" in command and "run" in command:
        assert json.loads(stdout)["consistent"] is True
    elif command.startswith("pytest "):
        assert re.search(r"^\d+/\d+ tests collected \(\d+ deselected\)", stdout, re.M), stdout
    elif "monitor --since 0 --no-follow --count 5" in command:
        assert len(stdout.splitlines()) == 5 and all(LINE.match(line) for line in stdout.splitlines()), stdout


def _check_background(background: list[tuple[Background, LongRunning]], cwd: pathlib.Path, env: dict) -> None:
    """Wait for every long-running command to show its part, feeding idle watchers some work."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not all(spec.ready(bg) for bg, spec in background):
        time.sleep(0.1)
    idle = [bg for bg, spec in background if spec.needs_activity and not spec.ready(bg)]
    if idle:
        serve = Background("python -m orchestrator_mp run --workers 2", cwd, env)
        try:
            wait_for(lambda: "serving the queue" in serve.err.text(), timeout=60, what="the serving run")
            run_cli("enqueue", "demo", "--args", "[1, 2]", "--count", "200", cwd=cwd, check=True)
            wait_for(lambda: all(spec.ready(bg) for bg, spec in background), timeout=60,
                     what="every watcher to show the run: " + ", ".join(bg.command for bg in idle))
        finally:
            assert serve.stop() == 0
    for bg, spec in background:
        assert spec.ready(bg), f"{bg.command!r} showed nothing expected:\n{bg.out.text()}\n{bg.err.text()}"
    if any("run --workers 4" in bg.command for bg, _ in background):
        # The quick start's serving run takes the task `enqueue` queued just before it.
        wait_for(lambda: run_cli_json("status", cwd=cwd)["queues"]["pending"] == 0, timeout=60,
                 what="the serving run to take the queued task")


@pytest.mark.slow
@pytest.mark.parametrize("document", _documents_with(lambda doc: python_blocks(doc.read_text())))
def test_every_python_example_runs(document, tmp_path):
    """Each ```python block of a document runs, in order, in one directory, and exits 0."""
    for index, code in enumerate(python_blocks(document.read_text())):
        script = tmp_path / f"example_{index}.py"
        script.write_text(code)
        result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_environment(), text=True,
                                capture_output=True, timeout=FINITE_TIMEOUT_S)
        assert result.returncode == 0, f"{document.name}, example {index}:\n{code}\n{result.stdout}\n{result.stderr}"
