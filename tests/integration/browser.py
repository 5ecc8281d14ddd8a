"""Headless Chromium for the tests where a person would look (the dashboard, Label Studio's UI).

Chromium and its driver come from Debian (`chromium`, `chromium-driver`), installed by the `chromium`
fixture when /usr/bin/chromium is missing; selenium drives them (no Selenium Manager download).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.prerequisites import unavailable

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,2600",
)


def _apt_install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends",
               "chromium", "chromium-driver"]  # fmt: skip
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(
            f"apt-get install chromium chromium-driver failed:\n{(done.stdout + done.stderr)[-3000:]}"
        )


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium + chromium-driver, installed when missing (CI does not need them preinstalled)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if shutil.which("apt-get") is None:
            unavailable(
                "chromium is not installed and apt-get is unavailable to install it (Debian/Ubuntu only)"
            )
        if os.geteuid() != 0:
            unavailable("chromium is not installed and installing it with apt-get needs root")
        started = time.monotonic()
        _apt_install()
        print(f"\ninstalled chromium + chromium-driver in {time.monotonic() - started:.0f} s")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    profile = tempfile.mkdtemp(prefix="hitl-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def click_to_new_page(driver: Any, element_id: str, timeout: float = 20) -> None:
    """Click `element_id` and wait until the browser shows the next document, fully loaded.

    Marks the current window, then polls until the mark is gone. Selenium's `staleness_of` polls the old
    element instead, and chromedriver can answer that with a bare WebDriverException ("Node with given id
    does not belong to the document") rather than StaleElementReferenceException mid-navigation, which
    `staleness_of` does not catch (seen once in CI).
    """
    from selenium.common.exceptions import WebDriverException

    driver.execute_script("window.__hitlPreviousPage = true;")
    driver.find_element("id", element_id).click()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if driver.execute_script(
                "return !window.__hitlPreviousPage && document.readyState === 'complete';"
            ):
                return
        except WebDriverException:  # the old document is going away mid-call: ask again
            pass
        time.sleep(0.05)
    raise AssertionError(f"clicking #{element_id} did not load a new page in {timeout} s")
