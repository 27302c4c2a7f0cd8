"""Debian's chromium, driven by selenium through chromium-driver; nothing downloads a browser.

Used by the browser tests and by ``scripts/ui_screenshots.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_BROWSERS = ("chromium", "chromium-browser")
_DRIVERS = ("chromedriver", "chromium-driver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def _which(names: tuple[str, ...]) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


def why_no_browser() -> str | None:
    """One reason the browser cannot run here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if _which(_BROWSERS) is None or _which(_DRIVERS) is None:
        return (
            "chromium and chromium-driver are not installed "
            "(scripts/setup.sh apt-installs them where apt is available)"
        )
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A headless chromium with a fresh profile; its console log is readable."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = _which(_BROWSERS), _which(_DRIVERS)
    assert browser and driver, why_no_browser()
    # Selenium Manager must never look for (or download) a browser or a driver.
    os.environ["SE_OFFLINE"] = "true"
    with tempfile.TemporaryDirectory(prefix="p2pw-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        drv = webdriver.Chrome(options=options, service=Service(executable_path=driver))
        try:
            yield drv
        finally:
            drv.quit()
