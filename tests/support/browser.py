"""A real browser for the tests: Playwright driving Debian's ``chromium`` (installed by ``make tools``).

Playwright's own browser builds are downloaded from a CDN these machines cannot reach, so the tests
launch the system's Chromium by its executable path (``CHROMIUM_PATH``, else ``chromium`` on PATH).
A missing browser fails the test with "run `make tools`": the ``browser`` tests are never skipped.
Screenshots go to :func:`artifacts_dir`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright


def chromium_path() -> str:
    """The Chromium executable to drive; fails (never skips) when none is installed."""
    configured = os.environ.get("CHROMIUM_PATH", "").strip()
    path = configured or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path or not os.access(path, os.X_OK):
        raise AssertionError(
            f"no Chromium at {configured or 'chromium on PATH'}: run `make tools` (apt-get install chromium)"
        )
    return path


def artifacts_dir(factory: pytest.TempPathFactory) -> Path:
    """Where browser tests write screenshots: ``TEST_ARTIFACTS_DIR`` when set (CI uploads it), else
    ``artifacts/`` under the session's pytest base temp (``--basetemp``)."""
    configured = os.environ.get("TEST_ARTIFACTS_DIR", "").strip()
    folder = Path(configured) if configured else factory.getbasetemp() / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium for one test (``--no-sandbox``: the tests run as root in a container)."""
    executable = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            await launched.close()
