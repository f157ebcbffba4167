"""Build Redis clients from a URL; always in the process that will use them.

A redis-py client holds sockets, and a socket shared across a fork is shared
by two processes that interleave their bytes on it. Workers therefore receive a
URL, never a client, and call :func:`create_client` after the fork.
"""
from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .exceptions import BackendUnavailable


def create_client(url: str, *, retries: bool = True, **options: object) -> redis.Redis:
    """A client for ``url`` (``unix://PATH``, ``redis://``, ``rediss://``), strings decoded.

    ``retries=False`` turns off redis-py's silent reconnect-and-resend (10 tries by
    default): a worker must *know* when a reply was lost, because a resent claim
    could move tasks it never hears of. It reconnects itself and resynchronises.
    """
    options.setdefault("decode_responses", True)
    if not retries:
        options["retry"] = Retry(NoBackoff(), 0)
    return redis.Redis.from_url(url, **options)


def check_reachable(client: redis.Redis, url: str) -> None:
    """PING once; raise BackendUnavailable with the URL (password hidden) if it fails."""
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BackendUnavailable(f"cannot reach Redis at {redact(url)}: {exc}") from None


def redact(url: str) -> str:
    """The URL with any password replaced, safe for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    shown = f"{user}:***" if user else "***"
    return f"{scheme}://{shown}@{host}"
