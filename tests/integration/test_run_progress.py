"""What `run` shows while it works: a live display on a terminal, lines on a pipe, nothing with --json."""
from __future__ import annotations

import json
import re

from tests.helpers import run_cli, run_in_pty

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    """A pipe gets plain `progress:` lines: settled/total, errors, rate, active workers, queue, ETA."""
    result = run_cli("run", "--workers", "2", "--demo", "1500", "--demo-ms", "1", "--demo-fail-rate", "0.01",
                     "--progress-interval", "0.2", cwd=tmp_path, check=True)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("progress: ")]
    assert lines, result.stderr
    pattern = re.compile(
        r"^progress: (\d+)/1500 settled \([\d.]+%\), \d+ completed, \d+ errors, [\d,]+/s, \d workers active, "
        r"queue \d+ pending / \d+ in flight, ETA (\d+s|\d+m\d\ds|\?)$"
    )
    assert all(pattern.match(line) for line in lines), lines
    settled = [int(pattern.match(line).group(1)) for line in lines]
    assert settled == sorted(settled)
    assert "done: 1485 completed, 15 errors of 1500 submitted" in result.stderr


def test_live_display_moves_on_a_terminal(tmp_path):
    """On a terminal the display is redrawn in place with a growing count, rate, workers and ETA, ending at 100%."""
    code, screen = run_in_pty("run", "--workers", "2", "--demo", "3000", "--demo-ms", "1", cwd=tmp_path)
    assert code == 0, screen
    text = ANSI.sub("", screen)
    frames = re.findall(r"run .*?(\d+)% ([\d,]+)/3,000 ([\d,]+)/s (\d+) errors (\d) workers queue [\d,]+\+[\d,]+ ETA",
                        text)
    assert len(frames) >= 3, text
    counts = [int(frame[1].replace(",", "")) for frame in frames]
    assert counts == sorted(counts) and len(set(counts)) >= 3, counts
    assert frames[-1][0] == "100" and counts[-1] == 3000
    assert any(int(frame[2].replace(",", "")) > 0 for frame in frames)
    assert "\r" in screen or "\x1b[" in screen  # redrawn in place, not appended
    assert "done: 3000 completed, 0 errors of 3000 submitted" in text


def test_json_run_prints_only_the_report(tmp_path):
    """--json: stdout is exactly one JSON document, with every field it always had; stderr stays empty."""
    result = run_cli("run", "--workers", "2", "--demo", "500", "--progress-interval", "0.05", "--json",
                     cwd=tmp_path, check=True)
    report = json.loads(result.stdout)
    assert {"total_work_created", "total_work_completed", "total_errors", "elapsed_s", "throughput_per_s",
            "workers", "run", "consistent"} <= set(report)
    assert report["run"]["completed"] == 500
    assert result.stderr == ""
