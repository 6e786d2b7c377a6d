"""A real headless Chromium for the console tests (the system's chromium + chromedriver).

Selenium drives it through the system chromedriver; nothing is downloaded. The
browser is blocking, so a test runs its browser part in a thread
(`await asyncio.to_thread(drive, ...)`) while the gateway keeps serving on the
test's event loop. Screenshots of every page land in `console-shots/`.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = Path(__file__).resolve().parents[1] / "console-shots"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)
WAIT = 10  # seconds for anything on a page to appear


def start_browser():
    """A fresh headless Chromium with its own profile and download folder."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(
            "chromium and chromium-driver are not installed (make test installs them as root)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="xaiproxy-chromium-")
    downloads = tempfile.mkdtemp(prefix="xaiproxy-downloads-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option(
        "prefs", {"download.default_directory": downloads, "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads}
    )
    driver.downloads = Path(downloads)
    driver.profile = profile
    return driver


def stop_browser(driver) -> None:
    driver.quit()
    shutil.rmtree(driver.profile, ignore_errors=True)
    shutil.rmtree(driver.downloads, ignore_errors=True)


def shot(driver, name: str, height: int = 6000, scale: float = 1) -> Path:
    """A screenshot of the whole page (beyond the viewport) as console-shots/<name>.png."""
    SHOTS.mkdir(exist_ok=True)
    width, h = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    data = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": min(h, height), "scale": scale},
        },
    )
    path = SHOTS / f"{name}.png"
    path.write_bytes(base64.b64decode(data["data"]))
    return path


def console_errors(driver) -> list[dict]:
    """Severe browser-log entries since the last call (CSP violations, JS errors, 4xx/5xx loads)."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def phone(driver, on: bool) -> None:
    """Emulate a 390 px wide phone screen, or go back to the desktop window."""
    if on:
        metrics = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    else:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
