"""The base of the two states that compute each step in Python instead of running its
script (the lock-based baseline, the file fallback): their settings and the calls that
only shape arguments. The steps themselves (each script's Python twin) are in
:mod:`.steps`, beside the scripts they mirror.
"""
from __future__ import annotations

import abc
from typing import Any, Sequence

from .. import keys
from ..exceptions import ConfigurationError
from ..keys import SUBMIT_MARKER_TTL_S
from ..wire import partition_key_of
from .base import StateManager
from .steps.workers import checked_fields


class MirroredStateManager(StateManager):
    """Base of the backends that compute in Python what the scripts compute (the
    lock-based baseline, the file fallback): their settings and the calls that only
    shape arguments. Rate limits and concurrency caps are not supported (``limits()``
    is None): a limited task fails with a clear message instead of running unlimited.
    Neither are partition keys (per-key ordering): submitting a keyed task raises.

    Args:
        completions_maxlen: approximate cap of ``work_completions`` / ``work_errors``.
        events_maxlen: approximate cap of the other streams.
        worker_lease_s: how long a worker's lease lasts without a heartbeat.
        result_ttl_s: how long a stored task result is kept.
    """

    submit_marker_ttl_s = SUBMIT_MARKER_TTL_S

    def __init__(
        self, *, completions_maxlen: int, events_maxlen: int, worker_lease_s: float, result_ttl_s: float
    ) -> None:
        self.completions_maxlen = completions_maxlen
        self.events_maxlen = events_maxlen
        self.worker_lease_s = worker_lease_s
        self.worker_lease_ms = max(1, int(worker_lease_s * 1000))
        self.result_ttl_s = result_ttl_s
        self.result_ttl_ms = max(1, int(result_ttl_s * 1000))

    def refuse_partition_keys(self, raw_tasks: Sequence[str]) -> None:
        """Per-key ordering lives in the lock-free scripts only: say so, never run keyed
        tasks unordered."""
        if any(partition_key_of(raw) is not None for raw in raw_tasks):
            message = f"partition keys (per-key ordering) need the lock-free state, not {self.kind!r}"
            raise ConfigurationError(message)

    def maxlen(self, stream: str) -> int:
        """The approximate cap of ``stream``."""
        return self.completions_maxlen if stream in (keys.WORK_COMPLETIONS, keys.WORK_ERRORS) else self.events_maxlen

    def update_worker_field(
        self, worker_id: str, field: str, value: object, *, epoch: int | None = None, pipeline: Any = None
    ) -> int:
        """As the contract says; a ``pipeline`` is accepted and the update made at once
        (a read-modify-write under a lock cannot wait in a caller's pipeline)."""
        version = self._do_update_state(worker_id, checked_fields({field: value}), None, epoch)
        return 0 if pipeline is not None else version

    def update_worker_state(
        self,
        worker_id: str,
        mapping: dict[str, object],
        expected_version: int | None = None,
        *,
        epoch: int | None = None,
    ) -> bool:
        return self._do_update_state(worker_id, checked_fields(mapping), expected_version, epoch) != 0

    @abc.abstractmethod
    def _do_update_state(
        self, worker_id: str, fields: dict[str, str], expected_version: int | None, epoch: int | None
    ) -> int:
        """One UPDATE_STATE step with checked fields: the new version, or 0 (stale)."""
