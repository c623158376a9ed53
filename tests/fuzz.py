"""The fast and slow twins of a Hypothesis property (the tests/test_fuzz_*.py files share them)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SLOW_EXAMPLES = 1000


def fuzz_settings(slow: bool, fast_examples: int = 30) -> settings:
    """The fast (default suite) or slow (``-m slow``, 1,000 examples) settings of one property: no deadline, no
    example database (any seed must pass), and no health check that only says the examples are slow or large."""
    return settings(max_examples=SLOW_EXAMPLES if slow else fast_examples, deadline=None, derandomize=False,
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                          HealthCheck.filter_too_much,
                                                          HealthCheck.function_scoped_fixture])


def twins(prop, fast_examples: int = 30):
    """``(fast test, slow test)`` of one property whose Hypothesis ``data`` argument is named ``data``."""
    fast = fuzz_settings(False, fast_examples)(given(data=st.data())(prop))
    slow = pytest.mark.slow(fuzz_settings(True)(given(data=st.data())(prop)))
    return fast, slow
