"""Differential test: every step's Lua script and its Python twin agree (issue 14).

The lock-free state runs each step as its Lua script on the server; the lock-based
baseline and the file fallback run the step's Python twin (``state/steps/*.py``, beside
the script) under their locks. Hypothesis drives all three with the same random
sequence of operations (submit, claim, settle with every kind of outcome, release,
takeover with and without a cause, cancel, dead-letter retry and purge, state updates,
heartbeats, deregistration) and after every operation compares what each returned and
what each holds: queues and their order, in-flight lists, the delayed set's size,
counters, the completion and error streams, dead letters, stored results, worker
states. A change made to a script and not to its twin (or the reverse) fails here.
"""
from __future__ import annotations

import json
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from orchestrator_mp import keys
from orchestrator_mp.exceptions import Fenced
from orchestrator_mp.models import Task
from orchestrator_mp.server import EmbeddedServer
from orchestrator_mp.state import (
    FileStateManager,
    RedisEnabledStateManager,
    RedisLockFreeStateManager,
)
from tests.contract import failed, ok

WORKERS = ("w0", "w1", "w2")
FAR = 3600.0  # a delay that never comes due during a run


def _normal_dead_letter(entry: dict) -> tuple:
    return entry.get("task_id"), entry.get("category"), entry.get("message"), entry.get("task")


def _normal_result(stored: dict | None) -> tuple | None:
    if stored is None:
        return None
    return stored.get("status"), json.dumps(stored.get("result"), sort_keys=True), stored.get("category")


class Differential(RuleBasedStateMachine):
    """The same operations on the Lua state and on both Python twins, compared step by step."""

    servers: tuple[EmbeddedServer, EmbeddedServer]

    @initialize()
    def start(self):
        self.directory = tempfile.TemporaryDirectory(prefix="differential-")
        self.managers = {
            "lua": RedisLockFreeStateManager(self.servers[0].url),
            "locked": RedisEnabledStateManager(self.servers[1].url),
            "file": FileStateManager(self.directory.name),
        }
        for name in ("lua", "locked"):
            self.managers[name].redis.flushall()
        self.epochs: dict[str, int] = {}
        self.submitted: list[str] = []  # task ids, in order
        for worker in WORKERS[:2]:
            self.register(worker)

    def teardown(self):
        for manager in getattr(self, "managers", {}).values():
            manager.close()
        if hasattr(self, "directory"):
            self.directory.cleanup()

    # -- running one operation everywhere ------------------------------------------------------
    def each(self, call):
        """``call(manager)`` on every state; their results (or exception types) must agree."""
        results = {}
        for name, manager in self.managers.items():
            try:
                results[name] = ("ok", call(manager))
            except Fenced as exc:
                results[name] = ("raised", type(exc).__name__)
        values = list(results.values())
        assert all(value == values[0] for value in values), results
        return values[0]

    def inflight(self, worker_id):
        return self.managers["lua"].inflight(worker_id)

    # -- rules -----------------------------------------------------------------------------------
    @rule(count=st.integers(1, 6), delayed=st.sampled_from([None, -1.0, FAR]), want=st.booleans(),
          crashes=st.integers(0, 2))
    def submit(self, count, delayed, want, crashes):
        raws = [Task(name="tests.add", args=(i, len(self.submitted)), want_result=want, crashes=crashes).to_json()
                for i in range(count)]
        self.submitted += [Task.from_json(raw).id for raw in raws]
        self.each(lambda m: m.submit(raws, delay_s=delayed))

    @rule(worker=st.sampled_from(WORKERS))
    def register(self, worker):
        _status, epoch = self.each(lambda m: m.register_worker(worker, pid=1, host="h"))
        self.epochs[worker] = epoch

    @precondition(lambda self: self.epochs)
    @rule(data=st.data(), count=st.integers(0, 8), divisor=st.integers(1, 3))
    def claim(self, data, count, divisor):
        worker = data.draw(st.sampled_from(sorted(self.epochs)))
        self.each(lambda m: m.claim(worker, self.epochs[worker], count, divisor))

    @precondition(lambda self: self.epochs)
    @rule(data=st.data())
    def settle(self, data):
        worker = data.draw(st.sampled_from(sorted(self.epochs)))
        held = self.inflight(worker)
        chosen = data.draw(st.lists(st.sampled_from(held), max_size=len(held), unique=True)) if held else []
        kinds = data.draw(st.lists(st.sampled_from(["ok", "dead", "retry_now", "retry_later"]),
                                   min_size=len(chosen), max_size=len(chosen)))
        outcomes = []
        for raw, kind in zip(chosen, kinds, strict=True):
            again = Task.from_json(raw).for_retry().to_json()
            outcomes.append({
                "ok": ok(raw, result_json="[1]"),
                "dead": failed(raw),
                "retry_now": failed(raw, retry_raw=again, retry_in_s=-1),
                "retry_later": failed(raw, retry_raw=again, retry_in_s=FAR),
            }[kind])
        if data.draw(st.booleans()) and held:
            outcomes.append(ok(held[0]))  # a duplicate of one already listed, or a late one
        self.each(lambda m: m.settle(worker, self.epochs[worker], outcomes))

    @precondition(lambda self: self.epochs)
    @rule(data=st.data())
    def release(self, data):
        worker = data.draw(st.sampled_from(sorted(self.epochs)))
        held = self.inflight(worker)
        chosen = data.draw(st.lists(st.sampled_from(held), max_size=len(held), unique=True)) if held else []
        self.each(lambda m: m.release(worker, self.epochs[worker], chosen))

    @precondition(lambda self: self.epochs)
    @rule(data=st.data(), crashed=st.booleans(), with_cause=st.booleans(), retry=st.booleans())
    def reclaim(self, data, crashed, with_cause, retry):
        worker = data.draw(st.sampled_from(sorted(self.epochs)))
        held = self.inflight(worker)
        cause = None
        if with_cause and held:
            raw = data.draw(st.sampled_from(held))
            again = Task.from_json(raw).for_retry().to_json() if retry else ""
            cause = failed(raw, category="timeout", retry_raw=again, retry_in_s=-1)
        self.each(lambda m: m.reclaim(worker, max_crashes=2, crashed=crashed, cause=cause))

    @precondition(lambda self: self.epochs)
    @rule(data=st.data(), what=st.sampled_from(["heartbeat", "deregister", "promote"]))
    def housekeeping(self, data, what):
        worker = data.draw(st.sampled_from(sorted(self.epochs)))
        if what == "heartbeat":
            self.each(lambda m: m.heartbeat(worker, self.epochs[worker]))
        elif what == "deregister":
            self.each(lambda m: m.deregister_worker(worker, self.epochs[worker]))
        else:
            self.each(lambda m: m.promote_due())

    @precondition(lambda self: self.epochs)
    @rule(data=st.data(), stale=st.booleans())
    def update_state(self, data, stale):
        worker = data.draw(st.sampled_from(sorted(self.epochs)))
        version = int(self.managers["lua"].get_worker_state(worker).get("version", 0)) - (1 if stale else 0)
        fields = {"note": data.draw(st.text(max_size=5)), "n": data.draw(st.integers(0, 9))}
        self.each(lambda m: m.update_worker_state(worker, fields, version, epoch=self.epochs[worker]))

    @rule(data=st.data())
    def cancel(self, data):
        queued = self.managers["lua"].redis.lrange(keys.QUEUE, 0, -1)
        if queued:
            raw = data.draw(st.sampled_from(queued))
            self.each(lambda m: m.cancel_queued(raw))

    @rule(data=st.data(), purge_all=st.booleans())
    def dead_letters(self, data, purge_all):
        entries = {name: manager.dead_letters(limit=None) for name, manager in self.managers.items()}
        if not entries["lua"]:
            return
        picks = data.draw(st.lists(st.integers(0, len(entries["lua"]) - 1), unique=True, max_size=3))
        if data.draw(st.booleans()):
            self.each(lambda m: m.retry_dead_letters([self._entry_of(m, entries, i) for i in picks]))
        else:
            chosen = None if purge_all else picks
            self.each(lambda m: m.purge_dead_letters(None if chosen is None else [self._entry_of(m, entries, i) for i in chosen]))

    def _entry_of(self, manager, entries, index):
        name = next(n for n, candidate in self.managers.items() if candidate is manager)
        return entries[name][index]

    # -- what each holds ---------------------------------------------------------------------------
    @invariant()
    def they_hold_the_same(self):
        if not hasattr(self, "managers"):
            return
        views = {name: self.view(manager) for name, manager in self.managers.items()}
        for name, view in views.items():
            for part in view:
                assert view[part] == views["lua"][part], (name, part, view[part], views["lua"][part])

    def view(self, manager):
        depths = manager.queue_depths(WORKERS)
        states = manager.batch_get_worker_states(WORKERS)
        return {
            "depths": {k: depths[k] for k in ("pending", "inflight", "delayed", "dead_letter", "by_worker")},
            "counters": manager.get_counters(),
            "inflight": {w: manager.inflight(w) for w in WORKERS},
            "states": {w: {f: s.get(f) for f in ("epoch", "version", "status", "current_task", "batch", "note", "n")}
                       for w, s in states.items()},
            "completions": [(f["n"], f["task_id"], f["worker"]) for _, f in manager.read_stream(keys.WORK_COMPLETIONS, 1000)],
            "errors": [(f["n"], f["task_id"], f["category"], f["retry"]) for _, f in manager.read_stream(keys.WORK_ERRORS, 1000)],
            "dead_letters": sorted(_normal_dead_letter(e) for e in manager.dead_letters(limit=None)),
            "results": {task_id: _normal_result(r) for task_id, r in manager.get_results(self.submitted).items()},
            "active": sorted(manager.active_workers()),
            "audit": manager.audit()["ok"],
        }


@pytest.fixture
def differential(server, tmp_path):
    """The state machine, with the test's server (Lua) and a second one (the baseline)."""
    second = EmbeddedServer(str(tmp_path / "baseline.db")).start()
    Differential.servers = (server, second)
    try:
        yield Differential
    finally:
        del Differential.servers
        second.stop()


def test_every_step_agrees_between_lua_and_its_python_twins(differential):
    """Random operation sequences leave the Lua state and both Python states identical."""
    run_state_machine_as_test(differential, settings=settings(
        max_examples=30, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ))
