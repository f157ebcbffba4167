"""The raw task's layout on the wire, owned here once: its JSON encoding, and the
string patterns (Python and Lua) that read it without decoding it.

A task travels through Redis as compact JSON whose members come in a fixed order,
``"crashes"`` first, then ``"id"`` and ``"name"``::

    {"crashes":0,"id":"9f2c...","name":"resize","args":[...],"kwargs":{...},"ts":1764...,
     "retries":0[,"max_retries":N][,"time_limit":S][,"result":true][,"key":"K"][,"shard":"S"]}

The scripts read the crash count, the id and the name by string match, and RECLAIM
raises the crash count by rewriting the prefix (cjson would turn ``[]`` into ``{}``
if it decoded and re-encoded the task). The Python states mirror those matches. Every
one of them is defined below, and ``tests/unit/test_wire.py`` checks that each Lua
pattern reads what its Python twin reads.
"""
from __future__ import annotations

import json
import re
from typing import Any

# -- member names (the order of ENCODED_ORDER is the order on the wire) ------------------------
CRASHES, ID, NAME, ARGS, KWARGS, TS, RETRIES = "crashes", "id", "name", "args", "kwargs", "ts", "retries"
MAX_RETRIES, TIME_LIMIT, WANTS, KEY, SHARD = "max_retries", "time_limit", "result", "key", "shard"
ENCODED_ORDER = (CRASHES, ID, NAME, ARGS, KWARGS, TS, RETRIES, MAX_RETRIES, TIME_LIMIT, WANTS, KEY, SHARD)

# -- what the scripts match, and the Python twins of those matches ---------------------------
# The crash count and the rest of the task (RECLAIM rewrites the count in place).
CRASHES_PREFIX = '{"crashes":'
LUA_CRASHES = '^{"crashes":(%d+),(.*)$'
CRASHES_RE = re.compile(r'^\{"crashes":(\d+),(.*)$', re.DOTALL)  # Lua's '.' also matches newlines
# The crash count alone (CLAIM's test for a suspect, which need not copy the rest).
LUA_CRASH_COUNT = '^{"crashes":(%d+),'
CRASH_COUNT_RE = re.compile(r'^\{"crashes":(\d+),')
# A task that never crashed a worker starts with this prefix; any other is a suspect.
SAFE_PREFIX = '{"crashes":0,'
LUA_ID = '"id":"([^"]*)"'
ID_RE = re.compile(r'"id":"([^"]*)"')
LUA_NAME = '"name":"([^"]*)"'
NAME_RE = re.compile(r'"name":"([^"]*)"')
# A task whose submitter waits for its outcome (its final outcome is stored).
WANTS_RESULT = '"result":true'


def id_needle(task_id: str) -> str:
    """The substring that finds a task by id in a list of raw tasks (TASK_STATUS)."""
    return f'"id":"{task_id}"'


def dumps(value: Any) -> str:
    """Compact, strict JSON (no NaN), the only encoding used on the wire."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


# -- reading a raw task without decoding it -----------------------------------------------------
def crashes_of(raw: str) -> int | None:
    """The crash count, or None when the entry is not a task (CLAIM, RECLAIM)."""
    match = CRASHES_RE.match(raw)
    return int(match.group(1)) if match else None


def is_suspect(raw: str) -> bool:
    """CLAIM's test: a task that crashed a worker before (crash count > 0)."""
    match = CRASH_COUNT_RE.match(raw)
    return match is not None and match.group(1) != "0"


def with_crashes(raw: str, count: int) -> str | None:
    """The task with its crash count set to ``count`` (RECLAIM); None if not a task."""
    match = CRASHES_RE.match(raw)
    return f"{CRASHES_PREFIX}{count},{match.group(2)}" if match else None


def task_id_of(raw: str, default: str = "") -> str:
    match = ID_RE.search(raw)
    return match.group(1) if match else default


def name_of(raw: str) -> str:
    match = NAME_RE.search(raw)
    return match.group(1) if match else ""


def wants_result(raw: str) -> bool:
    return WANTS_RESULT in raw


def _string_member(raw: str, member: str) -> str | None:
    """A string member of a raw task, decoding only entries that may have it."""
    if f'"{member}":' not in raw:
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    value = body.get(member) if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def partition_key_of(raw: str) -> str | None:
    """The partition key of a raw task (tasks sharing one run in order)."""
    return _string_member(raw, KEY)


def shard_key_of(raw: str) -> str | None:
    """The shard key of a raw task (tasks sharing one live in one shard)."""
    return _string_member(raw, SHARD)


__all__ = [
    "ENCODED_ORDER",
    "CRASHES_PREFIX",
    "LUA_CRASHES",
    "LUA_CRASH_COUNT",
    "LUA_ID",
    "LUA_NAME",
    "SAFE_PREFIX",
    "WANTS_RESULT",
    "crashes_of",
    "dumps",
    "id_needle",
    "is_suspect",
    "name_of",
    "partition_key_of",
    "shard_key_of",
    "task_id_of",
    "wants_result",
    "with_crashes",
]
