"""Build Redis clients from a URL; always in the process that will use them.

A redis-py client holds sockets, and a socket shared across a fork is shared
by two processes that interleave their bytes on it. Workers therefore receive a
URL, never a client, and call :func:`create_client` after the fork.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable, TypeVar

import redis
import redis.cluster
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ClusterDownError, TryAgainError
from redis.retry import Retry

from .exceptions import BackendUnavailable

# Patient clients ride over a server restart (the supervisor restarts a dead
# embedded server within ~0.1 s, loading its AOF may take longer): about 15 s.
PATIENT_RETRY = dict(backoff_base_s=0.01, backoff_cap_s=0.5, attempts=40)


PASSWORD_ENV = "ORCHESTRATOR_MP_REDIS_PASSWORD"

# Errors that mean "not reachable right now": a lost connection, or a cluster
# between a master's death and its replica's promotion (CLUSTERDOWN, TRYAGAIN).
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError)

_F = TypeVar("_F", bound=Callable[..., Any])
_C = TypeVar("_C", bound=type)


def _translating(method: _F) -> _F:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except UNAVAILABLE as exc:
            raise BackendUnavailable(f"Redis unreachable: {exc}") from exc

    return call  # type: ignore[return-value]


def translate_connection_errors(cls: _C) -> _C:
    """Class decorator: every public method of ``cls`` (its own, not inherited ones)
    raises BackendUnavailable for a lost or unreachable server. With a fail-fast client
    (``retries=False``) that happens at once; a patient client first resends for ~15 s.
    Every class that talks to Redis for the runtime wears it (state managers, limits),
    so callers handle one error whatever the step."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member) and name != "close":
            setattr(cls, name, _translating(member))
    return cls


def create_client(url: str, *, retries: bool = True, **options: Any) -> redis.Redis:
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


def is_cluster(client: Any) -> bool:
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
