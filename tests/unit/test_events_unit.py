"""Pure helpers of the read side: --since parsing, percentiles, stream entries."""
from __future__ import annotations

import pytest

from orchestrator_mp import keys
from orchestrator_mp.events import id_order, parse_since, resolve_stream
from orchestrator_mp.exceptions import ConfigurationError
from orchestrator_mp.figures import percentile, summarize
from orchestrator_mp.models import StreamEntry

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    "text, start",
    [
        ("$", None),
        ("0", "-"),
        ("all", "-"),
        ("30s", "1699999970000-0"),
        ("5m", "1699999700000-0"),
        ("2h", "1699992800000-0"),
        ("1d", "1699913600000-0"),
        ("250ms", "1699999999750-0"),
        ("1699999999000-3", "(1699999999000-3"),
        ("1699999999000", "1699999999000-0"),
    ],
)
def test_parse_since_accepts_the_documented_forms(text, start):
    """$, 0/all, durations, stream ids and millisecond times become XRANGE starts."""
    assert parse_since(text, NOW) == start


@pytest.mark.parametrize("text", ["yesterday", "5 minutes", "-3s", "1.5x", ""])
def test_parse_since_refuses_anything_else_naming_the_value(text):
    """An unknown --since value is a ConfigurationError that quotes it."""
    with pytest.raises(ConfigurationError, match="since must be"):
        parse_since(text, NOW)


def test_nearest_rank_percentiles():
    """p50/p95/p99 use the nearest-rank method; an empty sample gives zeros."""
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0
    assert summarize([3.0, 1.0, 2.0]) == {"count": 3, "mean": 2.0, "p50": 2.0, "p95": 3.0, "p99": 3.0, "max": 3.0}
    assert summarize([])["count"] == 0


def test_stream_entry_time_worker_and_json():
    """An entry's time comes from its id; metrics name their worker in the tags."""
    entry = StreamEntry(keys.EVENTS, "1700000000123-4", {"worker": "h:1:0", "status": "busy"})
    assert entry.time == pytest.approx(1_700_000_000.123)
    assert entry.worker == "h:1:0"
    assert entry.to_dict() == {
        "stream": keys.EVENTS, "id": "1700000000123-4", "time": entry.time, "fields": {"worker": "h:1:0", "status": "busy"}
    }
    tagged = StreamEntry(keys.METRICS, "1-0", {"name": "x", "value": "1", "tags": '{"worker": "h:1:1"}'})
    assert tagged.worker == "h:1:1"
    assert StreamEntry(keys.METRICS, "1-0", {"name": "x", "tags": "not json"}).worker == ""
    assert id_order("1700000000123-4") < id_order("1700000000123-10") < id_order("1700000000124-0")


def test_stream_aliases():
    """Short names (events, errors, ...) and full names both resolve; others are refused."""
    assert resolve_stream("errors") == keys.WORK_ERRORS
    assert resolve_stream(keys.WORKER_EVENTS) == keys.WORKER_EVENTS
    with pytest.raises(ConfigurationError, match="stream must be one of"):
        resolve_stream("queue:pending")
