"""Task JSON: the only shape accepted from the queue."""
from __future__ import annotations

import json

import pytest

from orchestrator_mp.exceptions import PayloadError
from orchestrator_mp.models import Task


def test_round_trip_keeps_every_field():
    """A task decodes to exactly what was encoded."""
    task = Task(name="add", args=(1, [2, 3]), kwargs={"x": {"y": None}})
    again = Task.from_json(task.to_json())
    assert again == task


def test_crash_count_is_the_first_member():
    """Recovery bumps the crash count by string match, so it must lead the JSON."""
    assert Task(name="n").to_json().startswith('{"crashes":0,')


def test_unserialisable_arguments_raise_payload_error():
    """Arguments that are not JSON are refused at submission, naming the problem."""
    with pytest.raises(PayloadError, match="not JSON serializable"):
        Task(name="n", args=(object(),)).to_json()


def test_nan_is_refused():
    """NaN is not JSON; it must not slip through as a Python extension."""
    with pytest.raises(PayloadError):
        Task(name="n", args=(float("nan"),)).to_json()


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"id": "x"}), "missing field"),
        (json.dumps({"crashes": 0, "id": 1, "name": "n", "args": [], "kwargs": {}, "ts": 0}), "field 'id'"),
        (json.dumps({"crashes": 0, "id": "x", "name": "n", "args": {}, "kwargs": {}, "ts": 0}), "field 'args'"),
        (json.dumps({"crashes": True, "id": "x", "name": "n", "args": [], "kwargs": {}, "ts": 0}), "crashes"),
    ],
)
def test_malformed_entries_raise_payload_error(raw, reason):
    """Anything but the documented task shape is a PayloadError carrying the data."""
    with pytest.raises(PayloadError, match=reason) as info:
        Task.from_json(raw)
    assert info.value.data == raw
