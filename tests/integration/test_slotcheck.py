"""Slot-check mode on one server: which steps a Redis Cluster would refuse (CROSSSLOT).

Drives every lock-free script and read path with the slot checker attached. The
sharded layout (what a cluster gets) must have no cross-slot step at all. The plain
layout (one server only) mixes slots freely; its list is pinned so the test notices
when that changes, but nothing requires it to shrink.
"""
from __future__ import annotations

import pytest

from orchestrator_mp import keys
from orchestrator_mp.limits import concurrency_limit, limiter
from orchestrator_mp.models import Task
from orchestrator_mp.slotcheck import SlotCheck, keys_of, slots
from orchestrator_mp.state import create_state_manager
from tests.contract import failed, ok

# The plain layout's steps that mix a worker's partition (hash-tagged) with shared
# keys (queue, totals, streams, dead letters, delayed set, lanes, limiters, results).
PLAIN_CROSS_SLOT = {
    "REGISTER", "DEREGISTER", "UPDATE_STATE", "HEARTBEAT", "CLAIM", "SETTLE", "RELEASE", "RECLAIM",
    "SUBMIT", "PROMOTE", "CANCEL", "DLQ_RETRY", "DLQ_PURGE", "TASK_STATUS", "ADMIT", "RELEASE_SLOT",
    "TAKE_SLOT", "BLMOVE", "MGET", "MULTI/EXEC",
}


def test_keys_of_finds_script_and_command_keys():
    """EVALSHA keys come from numkeys; multi-key commands from their positions."""
    assert keys_of(("EVALSHA", "0" * 40, 2, "a", "b", "arg"))[1] == ["a", "b"]
    assert keys_of(("MGET", "a", "b")) == ("MGET", ["a", "b"])
    assert keys_of(("BLMOVE", "q", "worker:{w}:inflight", 1, "RIGHT", "LEFT"))[1] == ["q", "worker:{w}:inflight"]
    assert len(slots(["worker:{w}:state", "worker:{w}:inflight"])) == 1
    assert len(slots(["worker:{w}:state", "queue:pending"])) == 2


def _queued(state) -> str:
    """One raw task still in a queue (any shard)."""
    for space in getattr(state, "spaces", [keys.PLAIN]):
        raw = state.redis.lindex(space.QUEUE, 0)
        if raw:
            return raw
    return ""


@pytest.mark.parametrize(("shards", "expected"), [(None, PLAIN_CROSS_SLOT), (3, set())], ids=["plain", "sharded"])
def test_every_cross_slot_step_is_known(server, settings, shards, expected):
    """Drive every script and read path; the cross-slot steps found are exactly the expected ones."""
    state = create_state_manager(settings.evolve(shards=shards), server.url)
    check = SlotCheck.attach(state.redis)
    plain = [Task(name="tests.add", args=(i, i), want_result=True).to_json() for i in range(4)]
    keyed = [Task(name="tests.add", args=(i, 0), partition_key="k").to_json() for i in range(2)]
    state.submit(plain + keyed)
    state.submit([Task(name="tests.add", args=(9, 9)).to_json()], due_at=0)
    epoch = state.register_worker("w1", pid=1, host="h")
    state.heartbeat("w1", epoch)
    state.update_worker_field("w1", "status", "busy", epoch=epoch)
    claimed = state.wait_claim("w1", epoch, 16, 1, 0.01)
    state.settle("w1", epoch, [ok(claimed[0]), failed(claimed[1])] + [ok(raw) for raw in claimed[2:-1]])
    state.release("w1", epoch, claimed[-1:])
    state.promote_due()
    state.cancel_queued(_queued(state))
    state.retry_dead_letters(state.dead_letters())
    state.purge_dead_letters(None)
    state.task_status(Task.from_json(plain[0]).id)
    state.get_results([Task.from_json(raw).id for raw in plain])
    limits = state.limits("w1")
    limits.admit("w1", epoch, claimed[0], "t", limiter("slotcheck", "100/s"), concurrency_limit("slotcheck", 2))
    limits.release(concurrency_limit("slotcheck", 2), "w1", "t")
    cap = concurrency_limit("slotcheck-code", 1)
    limits.free_slot(cap, limits.hold_slot(cap))
    state.claim("w1", epoch, 16)
    state.get_counters()
    state.audit()
    spare = state.register_worker("w2", pid=1, host="h")
    state.wait_claim("w2", spare, 16, 1, 0.01)  # an empty queue: the blocking BLMOVE path
    state.deregister_worker("w2", spare)
    state.reclaim("w1", max_crashes=3)
    found = set(check.violations)
    print(f"\nslot check: {check.calls} calls, cross-slot steps: {sorted(found)}")
    new = found - expected
    assert not new, {name: check.examples[name] for name in new}
    stale = expected - found
    assert not stale, f"no longer cross-slot, remove from the list: {sorted(stale)}"
    assert check.calls > 50
    state.close()
