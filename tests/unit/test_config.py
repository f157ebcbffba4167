"""Settings validation: clear errors naming the field, expected and received."""
from __future__ import annotations

import pytest

from orchestrator_mp.config import Settings
from orchestrator_mp.exceptions import ConfigurationError


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("workers", 0, "workers must be an integer >= 1, got 0"),
        ("workers", -3, "workers must be an integer >= 1, got -3"),
        ("workers", "4", "workers must be an integer >= 1, got '4'"),
        ("batch_size", 0, "batch_size must be an integer from 1 to 10,000"),
        ("batch_size", 10_001, "batch_size must be an integer from 1 to 10,000"),
        ("block_timeout_s", 0, "block_timeout_s must be a number > 0"),
        ("state", "bogus", "state must be one of"),
        ("durability", "always", "durability must be one of fast, strict"),
        ("log_level", "loud", "log_level must be one of"),
    ],
)
def test_invalid_values_raise_configuration_error(field, value, expected):
    """Each invalid value is refused with a message naming the field."""
    with pytest.raises(ConfigurationError, match=expected):
        Settings(**{field: value})


def test_configuration_error_is_a_value_error():
    """Callers may catch the built-in ValueError as well."""
    with pytest.raises(ValueError):
        Settings(workers=0)


def test_evolve_validates_again():
    """A changed copy is validated like a new one."""
    with pytest.raises(ConfigurationError):
        Settings().evolve(workers=0)
