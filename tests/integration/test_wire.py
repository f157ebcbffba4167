"""The raw task's layout has one owner (orchestrator_mp.wire): the Lua patterns the
scripts match and their Python twins read the same crash count, rest, id and name from
any entry, task or not (issue 14: the layout was known in seven places)."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator_mp import wire
from orchestrator_mp.models import Task
from orchestrator_mp.state.steps.lua import WIRE

# Reads each raw task with the scripts' own patterns (the WIRE prelude the steps use).
READ = WIRE + """
local out = {}
for i = 1, #ARGV do
  local raw = ARGV[i]
  local count = string.match(raw, CRASH_COUNT)
  local crashes, rest = string.match(raw, CRASHES_AND_REST)
  out[i] = {count or '', crashes or '', rest or '', string.match(raw, TASK_ID) or '', string.match(raw, TASK_NAME) or '',
            crashes and (CRASHES_PREFIX .. (tonumber(crashes) + 1) .. ',' .. rest) or ''}
end
return out
"""

_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_tasks = st.builds(
    lambda name, args, crashes, retries, key: Task(
        name=name, args=tuple(args), crashes=crashes, retries=retries, partition_key=key, want_result=bool(crashes % 2)
    ).to_json(),
    _names, st.lists(_json, max_size=3), st.integers(0, 12), st.integers(0, 3), st.none() | st.just("k:1"),
)
_garbage = st.text(max_size=40) | st.builds(json.dumps, _json) | st.just('{"crashes":x,"id":"a"}')


def _python_reading(raw: str) -> list[str]:
    count = wire.CRASH_COUNT_RE.match(raw)
    match = wire.CRASHES_RE.match(raw)
    bumped = wire.with_crashes(raw, int(match.group(1)) + 1) if match else None
    return [count.group(1) if count else "", match.group(1) if match else "", match.group(2) if match else "",
            wire.task_id_of(raw), wire.name_of(raw), bumped or ""]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raws=st.lists(_tasks | _garbage, min_size=1, max_size=20))
def test_the_lua_and_python_readings_of_a_raw_task_agree(state, raws):
    """Crash count, rest, id, name and the bumped task read the same in Lua and Python."""
    lua = state.redis.eval(READ, 0, *raws)
    assert [list(row) for row in lua] == [_python_reading(raw) for raw in raws]


def test_tasks_keep_the_layout_the_scripts_read():
    """A task encodes its members in the wire's order, crash count first; it decodes back."""
    task = Task(name="resize", args=("a.png", 2), kwargs={"w": 1}, max_retries=2, time_limit_s=5.0,
                want_result=True, partition_key="k", shard_key="s")
    raw = task.to_json()
    assert raw.startswith(wire.SAFE_PREFIX) and list(json.loads(raw)) == list(wire.ENCODED_ORDER)
    assert Task.from_json(raw) == task
    assert wire.is_suspect(Task(name="x", crashes=1).to_json()) and not wire.is_suspect(raw)
    assert (wire.partition_key_of(raw), wire.shard_key_of(raw), wire.wants_result(raw)) == ("k", "s", True)
