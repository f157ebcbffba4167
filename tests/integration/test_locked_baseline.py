"""The lock-based baseline's locks: leases, fencing, wait policies, scopes."""
from __future__ import annotations

import threading
import time

import multiprocess
import pytest
import redis

from orchestrator_mp import keys
from orchestrator_mp.connection import create_client
from orchestrator_mp.exceptions import ConfigurationError, LockTimeout
from orchestrator_mp.state import RedisEnabledStateManager
from orchestrator_mp.state.locks import (
    FENCED_APPLY,
    TUNED,
    FencedLock,
    LockStats,
    acquire,
    fenced_args,
    release,
)


@pytest.fixture
def client(server):
    c = create_client(server.url)
    yield c
    c.close()


def _apply(client, held, writes):
    key_list, args = fenced_args(held, writes)
    return client.register_script(FENCED_APPLY)(keys=key_list, args=args)


def test_a_holder_that_lost_its_lease_cannot_write(client):
    """Once the lease ran out and another holder took the lock, the old holder's writes are refused."""
    stats = LockStats()
    first = FencedLock(client, "lock:t", lease_s=0.05, blocking_timeout_s=1)
    acquire(first, TUNED, stats)
    time.sleep(0.1)  # the lease runs out while "first" is still working
    second = FencedLock(client, "lock:t", lease_s=5, blocking_timeout_s=1)
    acquire(second, TUNED, stats)
    assert second.fence == first.fence + 1
    assert _apply(client, [first], [("SET", "guarded", "stale")]) == 0
    assert client.get("guarded") is None
    assert _apply(client, [second], [("SET", "guarded", "fresh"), ("RPUSH", "log", "a", "b")]) == 1
    assert client.get("guarded") == "fresh" and client.lrange("log", 0, -1) == ["a", "b"]
    release(first)  # not an error: the lease is gone
    assert client.get("lock:t") is not None  # and it did not release the new holder's lock
    release(second)
    assert client.get("lock:t") is None


def test_a_critical_section_whose_lease_ran_out_is_retried_once_and_writes_once(server, client):
    """A lost lease means nothing was written: the manager takes the lock again and redoes the step."""
    manager = RedisEnabledStateManager(server.url, lease_s=0.05, blocking_timeout_s=2)
    manager.register_worker("w1", pid=1, host="h")
    original = manager._read_state
    calls = []

    def slow_read(worker_id):
        state = original(worker_id)
        if not calls:
            time.sleep(0.1)  # outlive the lease; another owner takes and drops the lock meanwhile
            intruder = FencedLock(client, keys.worker_lock_key(worker_id), lease_s=1, blocking_timeout_s=1)
            acquire(intruder, TUNED, LockStats())
            release(intruder)
        calls.append(worker_id)
        return state

    manager._read_state = slow_read
    version = manager.update_worker_field("w1", "status", "busy")
    assert len(calls) == 2 and manager.stats.lost_leases == 1
    assert manager.get_worker_state("w1")["version"] == str(version) == "2"
    manager.close()


def test_tuned_policy_waits_for_a_holder_with_short_backoff(server, client):
    """A held lock is retried from 0.5 ms up, and taken within one backoff cap of its release."""
    manager = RedisEnabledStateManager(server.url, record_lock_samples=True)
    manager.register_worker("w1", pid=1, host="h")
    holder = FencedLock(client, keys.worker_lock_key("w1"), lease_s=5, blocking_timeout_s=1)
    acquire(holder, TUNED, LockStats())
    threading.Timer(0.05, release, args=(holder,)).start()
    started = time.perf_counter()
    manager.update_worker_field("w1", "status", "busy")
    waited = time.perf_counter() - started
    assert 0.045 < waited < 0.05 + TUNED.cap_s + 0.05
    assert manager.stats.attempts > manager.stats.acquires
    assert max(manager.stats.waits) >= 0.045
    manager.close()


def test_default_policy_sleeps_the_librarys_100_ms(server, client):
    """redis-py's default loop retries only every 100 ms: a 20 ms hold costs a 100 ms wait."""
    manager = RedisEnabledStateManager(server.url, wait_policy="default")
    manager.register_worker("w1", pid=1, host="h")
    holder = FencedLock(client, keys.worker_lock_key("w1"), lease_s=5, blocking_timeout_s=1)
    acquire(holder, TUNED, LockStats())
    threading.Timer(0.02, release, args=(holder,)).start()
    started = time.perf_counter()
    manager.update_worker_field("w1", "status", "busy")
    assert time.perf_counter() - started >= 0.095
    manager.close()


def test_a_lock_held_past_the_blocking_timeout_raises_lock_timeout(server, client):
    """Waiting is bounded: LockTimeout names the lock and the time waited."""
    manager = RedisEnabledStateManager(server.url, lease_s=0.05, blocking_timeout_s=0.2)
    client.set(keys.COUNTERS_LOCK, "someone else", px=5000)
    with pytest.raises(LockTimeout, match=keys.COUNTERS_LOCK) as info:
        manager.increment_counter("c")
    assert info.value.waited_s >= 0.19
    assert manager.stats.timeouts == 1
    manager.close()


def test_global_scope_takes_one_lock_for_everything(server, client):
    """The global-lock variant fences every operation on lock:global and nothing else."""
    manager = RedisEnabledStateManager(server.url, lock_scope="global")
    epoch = manager.register_worker("w1", pid=1, host="h")
    manager.submit(['{"crashes":0,"id":"a","name":"x","args":[],"kwargs":{},"ts":1}'])
    manager.claim("w1", epoch, 1)
    manager.increment_counter("c")
    fences = sorted(client.scan_iter("fence:*"))
    assert fences == [keys.fence_key(keys.GLOBAL_LOCK)]
    assert int(client.get(fences[0])) == 4
    manager.close()


def test_partition_scope_uses_worker_queue_and_counter_locks(server, client):
    """Per-partition locking: a worker's own lock, the work-queue lock around claims, the counters lock."""
    manager = RedisEnabledStateManager(server.url)
    epoch = manager.register_worker("w1", pid=1, host="h")
    manager.submit(['{"crashes":0,"id":"a","name":"x","args":[],"kwargs":{},"ts":1}'])
    manager.claim("w1", epoch, 1)
    fences = {name: int(client.get(name)) for name in client.scan_iter("fence:*")}
    assert fences == {
        keys.fence_key(keys.worker_lock_key("w1")): 2,  # register, claim
        keys.fence_key(keys.QUEUE_LOCK): 1,  # claim
        keys.fence_key(keys.COUNTERS_LOCK): 1,  # submit
    }
    manager.close()


def test_external_service_lock_excludes_a_second_holder(server):
    """acquire_lock is real here: a second manager cannot hold the same service lock."""
    first = RedisEnabledStateManager(server.url)
    second = RedisEnabledStateManager(server.url)
    assert first.acquire_lock("payments-api") is True
    assert second.acquire_lock("payments-api", blocking_timeout=0.05) is False
    first.release_lock("payments-api")
    assert second.acquire_lock("payments-api", blocking_timeout=0.5) is True
    second.release_lock("payments-api")
    first.close()
    second.close()


def test_worker_states_live_in_one_shared_hash(server, client):
    """As the old design had it: one JSON value per worker in worker_states."""
    manager = RedisEnabledStateManager(server.url)
    manager.register_worker("w1", pid=7, host="h")
    manager.register_worker("w2", pid=8, host="h")
    assert sorted(client.hkeys(keys.WORKER_STATES)) == ["w1", "w2"]
    assert client.exists(keys.worker_state_key("w1")) == 0
    manager.close()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lock_scope": "table"}, "lock_scope must be one of partition, global"),
        ({"wait_policy": "eager"}, "wait_policy must be one of tuned, default"),
        ({"lease_s": 5, "blocking_timeout_s": 1}, "need blocking_timeout_s > lease_s > 0"),
    ],
)
def test_bad_options_are_refused(options, message):
    """Constructor options are validated with a message naming them."""
    with pytest.raises(ConfigurationError, match=message):
        RedisEnabledStateManager("unix:///nonexistent", **options)


def test_release_of_an_expired_lock_does_not_raise(client):
    """Releasing after the lease ran out is quiet (the fence already protected the writes)."""
    lock = FencedLock(client, "lock:x", lease_s=0.02, blocking_timeout_s=1)
    acquire(lock, TUNED, LockStats())
    time.sleep(0.05)
    release(lock)
    with pytest.raises(redis.exceptions.LockError):
        lock.release()  # the library itself would raise on a second release



def _tokens(rounds):
    lock = FencedLock(redis.Redis(), "lock:t", lease_s=5, blocking_timeout_s=1)  # never connects:
    lock.do_acquire = lambda _token: True  # only the tokens are looked at
    tokens = []
    for _ in range(rounds):
        lock.acquire(blocking=False)
        tokens.append(lock.local.token)
    return tokens


def _take_tokens(rounds, results):
    results.put(_tokens(rounds))


def test_lock_tokens_are_unique_across_forked_processes():
    """Holders in forked workers never share a token (redis-py's uuid1 tokens repeat there
    once the parent has drawn one before forking, as a supervisor does)."""
    parent = _tokens(1)
    results = multiprocess.Queue()
    procs = [multiprocess.Process(target=_take_tokens, args=(20_000, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    tokens = [token for _ in procs for token in results.get(timeout=60)]
    for proc in procs:
        proc.join(timeout=30)
    assert len(set(parent + tokens)) == len(parent + tokens) == 80_001
