"""What the StateManager contract suite shares: the implementations it runs against,
how it builds one, and tasks and outcomes to feed it (the ``manager`` fixture is in
``tests/integration/conftest.py``)."""
from __future__ import annotations

from orchestrator_mp.models import Outcome, Task
from orchestrator_mp.state import create_state_manager

# Every registered kind, plus the baseline's global-lock variant.
# "sharded": the lock-free state split over 3 hash-tagged shards (the Redis Cluster
# layout) on one server.
IMPLEMENTATIONS = ["lockfree", "sharded", "locked", "locked-global", "file"]
REDIS_IMPLEMENTATIONS = ["lockfree", "sharded", "locked", "locked-global"]
SHARDS = 3


def build_manager(variant, settings, url, **options):
    """The manager a contract test runs against (in the calling process)."""
    if variant == "locked-global":
        return create_state_manager(settings.evolve(state="locked"), url, lock_scope="global", **options)
    if variant == "sharded":
        return create_state_manager(settings.evolve(state="lockfree", shards=SHARDS), url, **options)
    return create_state_manager(settings.evolve(state=variant), url, **options)


def fifo(manager):
    """Whether the manager keeps one queue in submission order. A sharded one keeps
    order per shard (and per partition key), not across shards."""
    return manager.shard_count == 1


def claim_all(manager, worker_id, epoch, max_count=16):
    """Claims until the queue is empty: the list of batches."""
    batches = []
    while batch := manager.claim(worker_id, epoch, max_count):
        batches.append(batch)
    return batches


def server_url(request, variant):
    """A fresh server's URL for the Redis implementations; None for the file one."""
    return None if variant == "file" else request.getfixturevalue("server").url


def raw_task(name="tests.add", *args, **fields):
    return Task(name=name, args=args, **fields).to_json()


def ok(raw, result_json=""):
    task = Task.from_json(raw)
    return Outcome(raw=raw, task_id=task.id, name=task.name, ok=True, want_result=task.want_result,
                   result_json=result_json)


def failed(raw, category="task_error", retry_raw="", retry_in_s=0.0):
    task = Task.from_json(raw)
    return Outcome(raw=raw, task_id=task.id, name=task.name, ok=False, category=category, message="boom",
                   error_type="ValueError", want_result=task.want_result, retry_raw=retry_raw, retry_in_s=retry_in_s)
