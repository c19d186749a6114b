"""Test isolation for RED tests: the process-wide secret redactor starts empty in every test
(in-process CLI runs register protected values; fuzzing registers random ones)."""

from __future__ import annotations

import pytest

from faice.secrets import REDACTOR


@pytest.fixture(autouse=True)
def _fresh_redactor():
    REDACTOR.clear()
    yield
    REDACTOR.clear()
