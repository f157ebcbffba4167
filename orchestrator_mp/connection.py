"""Build Redis clients from a URL; always in the process that will use them.

A redis-py client holds sockets, and a socket shared across a fork is shared
by two processes that interleave their bytes on it. Workers therefore receive a
URL, never a client, and call :func:`create_client` after the fork.
"""
from __future__ import annotations

import functools
import inspect
import os
import re
from typing import TYPE_CHECKING, Any, Callable, TypeVar, cast

import redis
import redis.cluster
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ClusterDownError, OutOfMemoryError, TryAgainError
from redis.retry import Retry

from .exceptions import BackendFull, BackendUnavailable, ConfigurationError

if TYPE_CHECKING:
    from typing_extensions import TypeIs

# Patient clients ride over a server restart (the supervisor restarts a dead
# embedded server within ~0.1 s, loading its AOF may take longer): about 15 s.
PATIENT_RETRY = dict(backoff_base_s=0.01, backoff_cap_s=0.5, attempts=40)


PASSWORD_ENV = "ORCHESTRATOR_MP_REDIS_PASSWORD"

# Errors that mean "not reachable right now": a lost connection, or a cluster
# between a master's death and its replica's promotion (CLUSTERDOWN, TRYAGAIN).
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError)

# The only maxmemory policy under which nothing the runtime stores can vanish (issue 13).
SAFE_POLICY = "noeviction"

# A write refused at maxmemory. A command (or a MULTI) is answered "-OOM ...", which
# redis-py raises as OutOfMemoryError, and so is a script on Redis 7+. Redis 6 wraps an
# error raised inside a script in its own ("ERR Error running script (call to f_...):
# @user_script:1: -OOM ..."), a plain ResponseError: there the inner error code is
# matched, never the wording of the message.
_SCRIPT_OOM = re.compile(r"Error running script .*: -OOM ")

# What a watcher (status --watch, monitor, metrics) sees when the run it watches goes
# away: a raw client's lost connection, or a state manager's translation of it.
GONE = (*UNAVAILABLE, BackendUnavailable)

_F = TypeVar("_F", bound=Callable[..., Any])
_C = TypeVar("_C", bound=type)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a write because it reached ``maxmemory``."""
    if isinstance(exc, OutOfMemoryError):
        return True
    return isinstance(exc, redis.ResponseError) and _SCRIPT_OOM.search(str(exc)) is not None


def memory_use(client: Any) -> tuple[int | None, int | None]:
    """``(used_memory, maxmemory)`` in bytes from INFO memory (which a full server still
    answers), of the fullest master on a cluster; ``(None, None)`` when unreadable."""
    try:
        info = client.info("memory")
    except (redis.RedisError, AttributeError):
        return None, None
    nodes = [info] if "used_memory" in info else [v for v in info.values() if isinstance(v, dict)]
    figures = [(int(n["used_memory"]), int(n.get("maxmemory") or 0)) for n in nodes if "used_memory" in n]
    if not figures:
        return None, None
    used, most = max(figures, key=lambda f: f[0] / f[1] if f[1] else 0.0)
    return used, most or None


def _mib(size: int) -> str:
    return f"{size / 1048576:.1f} MiB" if size >= 1048576 else f"{size:,} bytes"


def out_of_memory(client: Any) -> BackendFull:
    """The BackendFull for a write ``client``'s server refused at maxmemory: how full
    it is (when INFO answers) and what to do."""
    used, most = memory_use(client) if client is not None else (None, None)
    how_full = f"used {_mib(used)} of maxmemory {_mib(most)}" if used is not None and most else "maxmemory reached"
    message = (
        f"Redis is full ({how_full}) and refused the write; nothing of it was stored. Free memory "
        "(let workers drain the queue, `dlq purge`, a shorter result_ttl_s) or raise the limit "
        "(CONFIG SET maxmemory <bytes>); workers wait meanwhile and resume by themselves"
    )
    return BackendFull(message, used, most)


def _translating(method: _F) -> _F:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except UNAVAILABLE as exc:
            raise BackendUnavailable(f"Redis unreachable: {exc}") from exc
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            raise out_of_memory(getattr(args[0], "redis", None) if args else None) from exc

    return cast(_F, call)  # functools.wraps keeps the signature


def translate_connection_errors(cls: _C) -> _C:
    """Class decorator: every public method of ``cls`` (its own, not inherited ones)
    raises BackendUnavailable for a lost or unreachable server, and BackendFull for a
    write refused at ``maxmemory`` (an OOM reply). With a fail-fast client
    (``retries=False``) an outage is raised at once; a patient client first resends for
    ~15 s. Every class that talks to Redis for the runtime wears it (state managers,
    limits), so callers handle one error whatever the step."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member) and name != "close":
            setattr(cls, name, _translating(member))
    return cls


def create_client(url: str, *, retries: bool = True, **options: Any) -> redis.Redis | redis.cluster.RedisCluster:
    """A client for ``url`` (``unix://PATH``, ``redis://``, ``rediss://``), strings decoded.

    A server in cluster mode is detected (``INFO cluster``) and answered with
    redis-py's ``RedisCluster``, which routes each command to its slot's master.

    ``retries=True``: reconnect and resend for about 15 s (only for callers whose
    commands are safe to repeat: reads, idempotent scripts, batch-marked submits).
    ``retries=False``: fail at once. Workers need to *know* a reply was lost (a
    resent claim could move tasks they never hear of), and the supervisor must not
    sit in retries while the server it should restart is dead.
    """
    options.setdefault("decode_responses", True)
    for name, value in _auth_options(url).items():
        options.setdefault(name, value)  # kept out of the URL, so out of logs too
    if retries:
        backoff = ExponentialWithJitterBackoff(
            base=PATIENT_RETRY["backoff_base_s"], cap=PATIENT_RETRY["backoff_cap_s"]
        )
        options["retry"] = Retry(backoff, int(PATIENT_RETRY["attempts"]))
    else:
        options["retry"] = Retry(NoBackoff(), 0)
    client = redis.Redis.from_url(url, **options)
    if url.startswith("unix:") or not _cluster_enabled(client):
        return client
    client.close()
    # The same retry policy: fail-fast callers do not ride over a failover either.
    return redis.cluster.RedisCluster.from_url(url, **options)


def _cluster_enabled(client: redis.Redis) -> bool:
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    except redis.ResponseError:
        return False  # a server (or proxy) without INFO cluster is no cluster
    except redis.RedisError:
        return False  # unreachable: the caller's first command reports it


def is_cluster(client: object) -> TypeIs[redis.cluster.RedisCluster]:
    """Whether ``client`` talks to a Redis Cluster (keys must then share slots per call)."""
    return isinstance(client, redis.cluster.RedisCluster)


def check_reachable(url: str) -> None:
    """PING ``url`` once, without retries: a wrong host, password or certificate is
    reported at once, in one line (BackendUnavailable, password hidden), instead of
    after a patient client's retries."""
    client = redis.Redis.from_url(url, **_auth_options(url), decode_responses=True, retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BackendUnavailable(f"cannot reach Redis at {redact(url)}: {exc}") from None
    finally:
        client.close()


def eviction_policies(client: Any) -> dict[str, str | None]:
    """``maxmemory-policy`` of the server (named "") or of every master of a cluster, by
    node name (None: unreadable). CONFIG GET first; managed services that disable CONFIG still
    report ``maxmemory_policy`` in INFO memory."""
    if is_cluster(client):
        nodes = [(node.name, client.get_redis_connection(node)) for node in client.get_primaries()]
    else:
        nodes = [("", client)]
    return {name: _eviction_policy(node) for name, node in nodes}


def _eviction_policy(node: redis.Redis) -> str | None:
    try:
        return node.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.ResponseError:
        pass  # CONFIG disabled or renamed (managed services), or not allowed to this user
    try:
        return node.info("memory").get("maxmemory_policy")
    except redis.ResponseError:
        return None


def check_eviction_policy(client: Any, where: str, *, allow: bool) -> str | None:
    """Refuse a server that may evict keys: ``maxmemory-policy`` must be ``noeviction``.

    Under any other policy Redis deletes keys to make room: queued tasks, in-flight
    lists, leases (live workers taken over), worker epochs (fencing reopened), stored
    results (their handles wait forever). ``allow`` accepts the risk: the problem is
    returned (for the caller's loud warning) instead of raised.

    Returns:
        None when every master says noeviction; the problem, in one line, when ``allow``.

    Raises:
        ConfigurationError: another policy (or none readable), and not ``allow``.
    """
    policies = eviction_policies(client)
    bad = {name: policy for name, policy in policies.items() if policy != SAFE_POLICY}
    if not bad:
        return None
    nodes = ", ".join(f"{name} {policy or 'unreadable'}".strip() for name, policy in sorted(bad.items()))
    if all(policy is None for policy in bad.values()):
        problem = (
            f"Redis at {where} does not say its maxmemory-policy (CONFIG GET and INFO memory refused"
            f"{': ' + ', '.join(sorted(bad)) if any(bad) else ''}); orchestrator_mp needs {SAFE_POLICY}"
        )
    else:
        problem = (
            f"Redis at {where} may evict keys (maxmemory-policy {nodes}): queued tasks, leases, worker "
            f"state and results could vanish; orchestrator_mp needs {SAFE_POLICY}"
        )
    if allow:
        return problem
    message = (
        f"{problem}: run `CONFIG SET maxmemory-policy {SAFE_POLICY}` (and set it in redis.conf) on "
        f"{'every master' if len(policies) > 1 else 'the server'}, or accept the risk with --allow-eviction"
    )
    raise ConfigurationError(message)


def _auth_options(url: str) -> dict[str, Any]:
    """The password from the environment when the URL carries none."""
    password = os.environ.get(PASSWORD_ENV)
    return {"password": password} if password and "@" not in url.partition("://")[2] else {}


def redact(url: str) -> str:
    """The URL with any password replaced, safe for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    shown = f"{user}:***" if user else "***"
    return f"{scheme}://{shown}@{host}"
