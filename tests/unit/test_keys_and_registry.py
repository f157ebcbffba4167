"""Key names (cluster hash tags), the task registry and small helpers."""
from __future__ import annotations

import re

import pytest
from redis.crc import key_slot

from orchestrator_mp import keys
from orchestrator_mp.connection import redact
from orchestrator_mp.demo import should_fail
from orchestrator_mp.exceptions import ConfigurationError, UnknownTaskError
from orchestrator_mp.models import Task
from orchestrator_mp.registry import (
    get_task,
    register_task,
    shard_key_for,
    task,
    unregister_task,
)
from orchestrator_mp.state.shards import shard_of, shard_of_task


def test_worker_keys_share_one_hash_tag():
    """Every key of a partition carries the worker id as its Redis Cluster hash tag."""
    builders = [keys.worker_state_key, keys.worker_inflight_key, keys.worker_completed_key, keys.worker_errors_key]
    tags = {re.search(r"\{([^}]*)\}", build("host:1:0")).group(1) for build in builders}
    assert tags == {"host:1:0"}


def test_counter_names_match_the_original_design():
    """The counters keep the names callers of the old design read."""
    assert keys.worker_completed_key("7") == "worker:{7}:completed"
    assert keys.worker_errors_key("7") == "worker:{7}:errors"
    assert {"total_work_completed", "total_work_created", "total_errors"} <= set(keys.COUNTERS)


def test_registry_refuses_a_second_function_under_a_taken_name():
    """Two functions cannot share a name; the same pair may register twice."""

    def first():
        pass

    def second():
        pass

    register_task("tests.unit.dup", first)
    try:
        register_task("tests.unit.dup", first)
        with pytest.raises(ConfigurationError, match="already registered"):
            register_task("tests.unit.dup", second)
    finally:
        unregister_task("tests.unit.dup")


def test_unknown_name_raises_lookup_error():
    """An unregistered name is an UnknownTaskError, also a LookupError."""
    with pytest.raises(LookupError):
        get_task("tests.unit.missing")
    with pytest.raises(UnknownTaskError) as info:
        get_task("tests.unit.missing")
    assert info.value.name == "tests.unit.missing"


def test_decorator_with_and_without_arguments():
    """@task and @task(name=...) both register."""

    @task
    def tests_unit_plain():
        return 1

    @task(name="tests.unit.named")
    def other():
        return 2

    try:
        assert get_task("tests_unit_plain")() == 1
        assert get_task("tests.unit.named")() == 2
    finally:
        unregister_task("tests_unit_plain")
        unregister_task("tests.unit.named")


@pytest.mark.parametrize("count, rate", [(1000, 0.1), (10000, 0.05), (7, 0.5), (100, 0.0), (50, 1.0)])
def test_demo_failures_are_an_exact_share(count, rate):
    """floor(count * rate) demo tasks fail, deterministically."""
    assert sum(should_fail(i, rate) for i in range(count)) == int(count * rate)


def test_redact_hides_passwords():
    """Passwords never reach logs or errors."""
    assert redact("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("redis://:secret@host") == "redis://***@host"
    assert redact("unix:///tmp/x.sock") == "unix:///tmp/x.sock"


def test_a_shard_key_space_prefixes_every_key_with_one_hash_tag():
    """Every key of a shard (worker partitions included) hashes to the shard's slot."""
    spaces = keys.shard_spaces(3)
    for index, space in enumerate(spaces):
        names = [space.QUEUE, space.key(keys.TOTAL_WORK_COMPLETED), space.key(keys.WORK_COMPLETIONS),
                 space.worker_state_key("host:1:0"), space.worker_inflight_key("host:1:0"), space.lane_key("k"),
                 space.result_key("abc"), space.slots_key("cap")]
        slots = {key_slot(name.encode()) for name in names}
        assert len(slots) == 1
        assert index * 16384 // 3 <= slots.pop() < (index + 1) * 16384 // 3  # one shard per master
        assert space.plain(space.QUEUE) == keys.QUEUE
    assert keys.PLAIN.QUEUE == keys.QUEUE and keys.PLAIN.worker_state_key("w") == keys.worker_state_key("w")
    assert [s.prefix for s in keys.shard_spaces(3)] == [s.prefix for s in spaces]  # deterministic


def test_tasks_route_to_shards_by_shard_key_then_partition_key_then_id():
    plain = [Task(name="t").to_json() for _ in range(300)]
    assert {shard_of_task(raw, 3) for raw in plain} == {0, 1, 2}
    keyed = {shard_of_task(Task(name="t", partition_key="acct-1").to_json(), 3) for _ in range(20)}
    limited = {shard_of_task(Task(name="t", shard_key="cap:x").to_json(), 3) for _ in range(20)}
    assert len(keyed) == 1 and len(limited) == 1 and limited == {shard_of("cap:x", 3)}
    raw = Task(name="t", shard_key="cap:x", partition_key="k").to_json()
    assert Task.from_json(raw).shard_key == "cap:x" and shard_of_task(raw, 1) == 0


def test_limited_tasks_get_their_limits_shard_key():
    register_task("tests.unit.capped", lambda: None, concurrency=2)
    register_task("tests.unit.rated", lambda: None, rate_limit="5/s")
    register_task("tests.unit.free", lambda: None)
    try:
        assert shard_key_for("tests.unit.capped") == "cap:task:tests.unit.capped"
        assert shard_key_for("tests.unit.rated") == "rate:task:tests.unit.rated"
        assert shard_key_for("tests.unit.free") is None and shard_key_for("nowhere") is None
    finally:
        for name in ("tests.unit.capped", "tests.unit.rated", "tests.unit.free"):
            unregister_task(name)


@pytest.mark.parametrize("concurrency", [True, 0, "3", 2.5])
def test_a_task_with_a_bad_concurrency_is_refused_when_registered(concurrency):
    """A cap must be an int >= 1 or a concurrency_limit(...): anything else is refused at
    registration (before: True was stored and failed later, inside a worker)."""
    with pytest.raises(ConfigurationError, match="concurrency"):
        register_task(f"tests.bad_cap_{concurrency!r}", lambda: None, concurrency=concurrency)
