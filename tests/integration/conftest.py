"""The contract suite's fixtures: one manager per implementation, on fresh storage."""
from __future__ import annotations

import pytest

from tests.contract import IMPLEMENTATIONS, build_manager, server_url


@pytest.fixture(params=IMPLEMENTATIONS)
def manager(request, settings):
    state = build_manager(request.param, settings, server_url(request, request.param))
    yield state
    state.close()


@pytest.fixture(params=IMPLEMENTATIONS)
def short_lease_manager(request, settings):
    """As ``manager``, with workers' leases cut to 0.2 s."""
    short = settings.evolve(lease_s=0.2, heartbeat_interval_s=0.1)
    state = build_manager(request.param, short, server_url(request, request.param))
    yield state
    state.close()


@pytest.fixture
def lockfree_manager(request, settings):
    """The lock-free manager alone, for what only its scripts do (partition keys)."""
    state = build_manager("lockfree", settings, server_url(request, "lockfree"))
    yield state
    state.close()
