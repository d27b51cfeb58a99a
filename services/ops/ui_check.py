"""Check the MLflow UI in a real browser: headless Chromium finds a sweep's parent run, expands
it, sees its child runs, and saves a screenshot. Needs Debian's chromium and chromium-driver
(``make browser-deps``) and the selenium package (a dev dependency)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

from services.errors import ServiceError

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)
# the expand/collapse button MLflow's runs table puts beside a parent run's name
EXPANDER = "button[data-component-id*='runnamecellrenderer']"


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) when both are installed, else None."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def check_runs_page(
    ui_url: str,
    experiment_id: str,
    parent_run_id: str,
    child_run_ids: Sequence[str],
    screenshot: Path,
    timeout_s: float = 90,
) -> int:
    """Open the experiment's runs page, expand the parent run, count its child runs shown.

    Returns how many of ``child_run_ids`` are visible; raises ServiceError if the parent or
    every child is missing. The screenshot is saved either way.
    """
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    paths = browser_paths()
    if paths is None:
        raise ServiceError("Chromium and chromedriver are not installed (make browser-deps installs them)")
    options = Options()
    options.binary_location = paths[0]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='samplewise-chromium-')}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(paths[1]), options=options)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    try:
        browser.get(f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs")
        wait = WebDriverWait(browser, timeout_s)
        parent_link = f"a[href*='/runs/{parent_run_id}']"
        try:
            anchor = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, parent_link))
        except TimeoutException:
            raise ServiceError(f"the MLflow UI at {ui_url} does not show parent run {parent_run_id}") from None
        anchor.find_element(By.XPATH, "./../..").find_element(By.CSS_SELECTOR, EXPANDER).click()

        def children_shown(b):
            shown = [c for c in child_run_ids if b.find_elements(By.CSS_SELECTOR, f"a[href*='/runs/{c}']")]
            return shown or False

        try:
            shown = wait.until(children_shown)
        except TimeoutException:
            raise ServiceError(f"the MLflow UI shows parent run {parent_run_id} but none of its child runs") from None
        time.sleep(0.5)  # let the expanded rows paint before the screenshot
        return len(shown)
    finally:
        browser.save_screenshot(str(screenshot))
        browser.quit()
