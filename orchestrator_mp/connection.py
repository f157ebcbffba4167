"""Build Redis clients from a URL; always in the process that will use them.

A redis-py client holds sockets, and a socket shared across a fork is shared
by two processes that interleave their bytes on it. Workers therefore receive a
URL, never a client, and call :func:`create_client` after the fork.
"""
from __future__ import annotations

import redis

from .exceptions import BackendUnavailable


def create_client(url: str, **options: object) -> redis.Redis:
    """A client for ``url`` (``unix://PATH``, ``redis://``, ``rediss://``), strings decoded."""
    options.setdefault("decode_responses", True)
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
