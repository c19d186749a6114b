from __future__ import annotations

import pytest

from faice.secrets import REDACTOR


@pytest.fixture(autouse=True)
def _clean_redactor():
    yield
    REDACTOR.clear()
