"""The file fallback's storage: committed sizes, crash safety, compaction, trimming."""
from __future__ import annotations

import os
import threading
import time

import multiprocess
import pytest

from orchestrator_mp import keys
from orchestrator_mp.models import Outcome, Task
from orchestrator_mp.state import FileStateManager, filestore


def _raw(i=0):
    return Task(name="tests.add", args=(i, i)).to_json()


def _ok(raw):
    task = Task.from_json(raw)
    return Outcome(raw=raw, task_id=task.id, name=task.name, ok=True)


@pytest.fixture
def files(tmp_path):
    manager = FileStateManager(str(tmp_path / "db.files"))
    yield manager
    manager.close()


def test_bytes_past_the_committed_size_are_ignored_and_truncated(files):
    """What a writer that died before committing appended is invisible, then overwritten."""
    raws = [_raw(i) for i in range(3)]
    files.submit(raws)
    queue_log = files.store.log_path("queue", 0)
    with open(queue_log, "ab") as handle:
        handle.write(b'"half a task that never committed')
    epoch = files.register_worker("w1", pid=1, host="h")
    assert files.claim("w1", epoch, 10) == raws
    files.submit([_raw(9)])
    assert files.queue_depths()["pending"] == 1
    with open(queue_log, "rb") as handle:
        assert b"half a task" not in handle.read()


def test_a_crash_before_the_document_is_replaced_changes_nothing(files, monkeypatch):
    """Appends without the committed document are not state: the old state stays whole."""
    files.submit([_raw(i) for i in range(2)])
    epoch = files.register_worker("w1", pid=1, host="h")
    claimed = files.claim("w1", epoch, 2)

    def crash(*_args):
        raise OSError("power cut")

    monkeypatch.setattr(filestore.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        files.settle("w1", epoch, [_ok(r) for r in claimed])
    monkeypatch.undo()
    assert files.get_counter("total_work_completed") == 0
    assert files.stream_tail(keys.WORK_COMPLETIONS).length == 0
    assert files.queue_depths()["by_worker"]["w1"] == 2
    assert files.settle("w1", epoch, [_ok(r) for r in claimed]).completed == 2
    assert files.audit()["ok"]


def test_state_survives_a_new_manager(tmp_path):
    """Everything is on disk: another manager (another process) sees the same state."""
    first = FileStateManager(str(tmp_path / "db.files"))
    first.submit([_raw(1)])
    first.increment_counter("custom", 3)
    second = FileStateManager(str(tmp_path / "db.files"))
    assert second.get_counter("custom") == 3 and second.queue_depths()["pending"] == 1


def test_a_consumed_queue_log_is_compacted(files, monkeypatch):
    """Once most of a log is consumed, its live part moves to the next generation file."""
    monkeypatch.setattr(filestore, "_COMPACT_BYTES", 1000)
    raws = [_raw(i) for i in range(60)]
    files.submit(raws)
    epoch = files.register_worker("w1", pid=1, host="h")
    taken = []
    while len(taken) < 50:
        taken += files.claim("w1", epoch, 10)
    assert taken == raws[:50]
    generations = sorted(name for name in os.listdir(files.directory) if name.startswith("queue."))
    assert generations != ["queue.0.log"] and len(generations) == 1
    assert files.claim("w1", epoch, 20) == raws[50:]


def test_streams_are_trimmed_approximately(tmp_path):
    """Like XADD MAXLEN ~: a stream never grows far past its cap, and keeps the newest."""
    manager = FileStateManager(str(tmp_path / "db.files"), events_maxlen=20)
    for i in range(300):
        manager.record_metric("m", i)
    tail = manager.stream_tail(keys.METRICS)
    assert 20 <= tail.length <= 20 + 100
    assert tail.last["value"] == "299"
    entries = manager.read_stream(keys.METRICS, count=5)
    assert [e[1]["value"] for e in entries] == ["295", "296", "297", "298", "299"]
    ids = [e[0] for e in manager.read_stream(keys.METRICS, count=300)]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


def test_a_child_forked_while_the_lock_is_held_does_not_keep_it(files):
    """flock follows descriptors: a process forked during a read must not keep the parent's lock."""
    with files.store.read():
        child = multiprocess.Process(target=time.sleep, args=(10,))
        child.start()
    try:
        writer = threading.Thread(target=files.increment_counter, args=("c",), daemon=True)
        writer.start()
        writer.join(3)
        assert not writer.is_alive(), "the forked child kept the parent's lock"
        assert files.get_counter("c") == 1
    finally:
        child.kill()
        child.join()
