"""The atomic steps of the state, one module each.

A step is one thing the state does atomically: submit, claim, settle, release,
reclaim, retire, the worker's own registration and state, dead letters. Its module
holds, side by side:

* the step's Lua script (the lock-free state runs it on the server, one call);
* its Python twin, a planner: a pure function of what the step reads that returns the
  same changes as a :class:`~.ops.Step` (the lock-based baseline and the file fallback
  apply it inside their critical section);
* the preparation of the script's KEYS and ARGV from the step's arguments.

So how a task is claimed lives in :mod:`.claim`, and a change to a step is made in one
module; ``tests/integration/test_differential.py`` runs the Lua and the Python states
on the same randomised operations and fails when they disagree.

:mod:`.lua` holds the Lua functions several scripts share; :mod:`.ops` the vocabulary
of the Python twins (the operations a Step lists, counters read once).
"""
from __future__ import annotations

from . import (
    claim,
    deadletters,
    limits,
    reads,
    reclaim,
    release,
    retire,
    settle,
    submit,
    workers,
)

MODULES = (workers, submit, claim, settle, release, reclaim, retire, deadletters, limits, reads)


def scripts() -> dict[str, str]:
    """Every Lua script of every step, by its constant's name (``CLAIM``, ``SETTLE``...)."""
    found = {}
    for module in MODULES:
        for name, value in vars(module).items():
            if name.isupper() and isinstance(value, str) and "redis.call" in value:
                found[name] = value
    return found
