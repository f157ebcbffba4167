"""One reader of a database's live state: what ``status``, ``run``'s progress display and
the Prometheus exporter show (and a dashboard would), read the same way.

:func:`read_snapshot` reads through the state contract only, so it serves every state
kind and every layout (one server, the shards of a cluster, the file state). Readers
ask for what they need: progress wants three cheap reads ten times a second; ``status``
wants the exact audit, every partition and the figures of the streams.
"""
from __future__ import annotations

import time
from typing import Any, Literal

import attrs

from . import keys
from .events import views_of
from .exceptions import ConfigurationError
from .figures import recent_latency, throughput
from .state import StateManager

Workers = Literal["none", "active", "known"]


@attrs.frozen(kw_only=True)
class Snapshot:
    """A database's state at one moment, as readers show it.

    ``counters`` are the key schema's totals; ``queues`` the depths (``pending``,
    ``inflight``, ``delayed``, ``dead_letter``..., ``by_worker``, and ``by_shard`` on a
    sharded layout); ``workers`` maps each partition read to its state hash plus
    ``completed`` / ``errors``. With the audit, ``consistent`` and ``checks`` say whether
    the counters agree with each other and the streams (one atomic read, exact even
    mid-run); without it they are None. ``throughput`` and ``latency`` come from the
    streams, where the state keeps Redis streams.
    """

    time: float
    counters: dict[str, int]
    queues: dict[str, Any]
    active_workers: list[str]
    workers: dict[str, dict[str, Any]]
    shards: int = 1
    consistent: bool | None = None
    checks: dict[str, bool] | None = None
    throughput: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None

    @property
    def moving(self) -> bool:
        """Tasks queued, in flight, or a live worker busy."""
        if self.queues["pending"] + self.queues["inflight"] > 0:
            return True
        return any(self.workers.get(w, {}).get("status") == "busy" for w in self.active_workers)

    def completed(self) -> int:
        return self.counters[keys.TOTAL_WORK_COMPLETED]

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape ``status --json`` prints (figures only where read)."""
        report: dict[str, Any] = {
            "active_workers": self.active_workers,
            "counters": self.counters,
            "workers": self.workers,
            "queues": self.queues,
            "consistent": self.consistent,
            "checks": self.checks,
            "shards": self.shards,
            "moving": self.moving,
            "time": self.time,
        }
        if self.throughput is not None:
            report["throughput"] = self.throughput
        if self.latency is not None:
            report["latency"] = self.latency
        return report


def read_snapshot(
    state: StateManager, *, workers: Workers = "known", audit: bool = True, figures: bool = True
) -> Snapshot:
    """Read a :class:`Snapshot` of ``state``.

    Args:
        workers: which partitions to describe: every one not yet retired (``known``),
            the live ones (``active``), or none.
        audit: read counters and depths in the audit's one atomic snapshot and check
            them (``status``); otherwise plain reads (progress, ten times a second).
        figures: throughput and latency from the streams (skipped where the state keeps
            no Redis streams).

    Raises:
        BackendUnavailable: the server is unreachable (readers attached to a run that
            went away wait for the next one: see :data:`connection.GONE`).
    """
    active = sorted(state.active_workers())
    described = {"none": [], "active": active, "known": sorted(state.known_workers())}[workers]
    states = state.batch_get_worker_states(described) if described else {}
    counts = state.worker_counters(described) if described else {}
    consistent = checks = None
    if audit:
        report = state.audit()
        counters, queues = report["counters"], report["queues"]
        consistent, checks = report["ok"], report["checks"]
    else:
        counters, queues = state.get_counters(), state.queue_depths()
    rates = latency = None
    if figures:
        try:
            views = views_of(state)
        except ConfigurationError:
            views = None
        if views is not None:
            rates, latency = throughput(views), recent_latency(views)
    return Snapshot(
        time=time.time(),
        counters=counters,
        queues=queues,
        active_workers=active,
        workers={w: {**states.get(w, {}), **counts.get(w, {})} for w in described},
        shards=state.shard_count,
        consistent=consistent,
        checks=checks,
        throughput=rates,
        latency=latency,
    )


__all__ = ["Snapshot", "read_snapshot"]
