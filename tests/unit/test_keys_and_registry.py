"""Key names (cluster hash tags), the task registry and small helpers."""
from __future__ import annotations

import re

import pytest

from orchestrator_mp import keys
from orchestrator_mp.connection import redact
from orchestrator_mp.demo import should_fail
from orchestrator_mp.exceptions import ConfigurationError, UnknownTaskError
from orchestrator_mp.registry import get_task, register_task, task, unregister_task


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
