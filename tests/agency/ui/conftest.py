"""Fixtures of the faice ui tests (helpers in ui_helpers.py)."""

from __future__ import annotations

import os

import pytest
from ui_helpers import chromium_available, new_browser


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's chromium + chromium-driver: scripts/infra.sh installs them)."""
    if not chromium_available():
        message = "Chromium and chromium-driver missing (scripts/infra.sh up installs them)"
        if os.environ.get("FAICE_TEST_INFRA") == "required":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    driver = new_browser()
    yield driver
    driver.quit()
