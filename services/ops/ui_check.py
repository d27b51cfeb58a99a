"""Check the MLflow UI in a real browser: headless Chromium finds a sweep's parent run and its
child runs, the answer table in the parent's description, the lr*(B) plot among its artifacts,
and the trials' chart view grouped by batch size, and saves a screenshot of each. Needs Debian's
chromium and chromium-driver (``make browser-deps``) and the selenium package (a dev dependency)."""

from __future__ import annotations

import shutil
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from services.errors import ServiceError
from services.metrics import BATCH_SIZE, TAG_ROLE, VAL_LOSS
from services.results.summary import HEADER

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
DESCRIPTION_S = 10  # once the run's page shows, how long its description may take to render
ANSWER_HEADER = HEADER.split(" | ")[3]  # a column title of the parent's answer table, as the UI renders it


@dataclass(frozen=True)
class UiCheck:
    children_shown: int
    screenshots: tuple[Path, ...]


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) when both are installed, else None."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def _image_shown(browser, name: str) -> bool:
    """Whether the artifact viewer shows ``name`` as a loaded image (MLflow serves it as a blob: URL)."""
    from selenium.webdriver.common.by import By

    for img in browser.find_elements(By.TAG_NAME, "img"):
        src = img.get_attribute("src") or ""
        if (src.startswith("blob:") or name in src) and int(img.get_attribute("naturalWidth") or 0) > 100:
            return True
    return False


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    paths = browser_paths()
    if paths is None:
        raise ServiceError("Chromium and chromedriver are not installed (make browser-deps installs them)")
    options = Options()
    options.binary_location = paths[0]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='samplewise-chromium-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(paths[1]), options=options)


def check_ui(
    ui_url: str,
    experiment_id: str,
    parent_run_id: str,
    child_run_ids: Sequence[str],
    expected: Sequence[str],
    plot: str | None,
    out_dir: Path,
    timeout_s: float = 90,
) -> UiCheck:
    """Open the sweep in the MLflow UI as a user would, saving a screenshot of each page:

    1. ``runs.png``: the experiment's runs, the parent expanded, its child runs listed;
    2. ``answer.png``: the parent run's page, whose description holds the answer table with every
       string of ``expected`` (the formulas, the verdicts);
    3. ``lr_star.png``: the parent's artifact ``plots/<plot>`` (the lr*(B) plot) shown as an image;
    4. ``charts.png``: the chart view of the trial runs grouped by batch size, val loss per sample
       against samples seen (MLflow's step).

    Raises ServiceError naming the first thing the UI does not show.
    """
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    base = f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    browser = _browser()
    wait = WebDriverWait(browser, timeout_s)

    def until(condition, missing: str):
        try:
            return wait.until(condition)
        except TimeoutException:
            raise ServiceError(f"the MLflow UI at {ui_url} {missing}") from None

    def shot(name: str) -> None:
        time.sleep(0.5)  # let the last rows and images paint
        path = out_dir / name
        browser.save_screenshot(str(path))
        shots.append(path)

    try:
        browser.get(f"{base}/runs")
        anchor = until(
            lambda b: b.find_element(By.CSS_SELECTOR, f"a[href*='/runs/{parent_run_id}']"),
            f"does not show parent run {parent_run_id}",
        )
        anchor.find_element(By.XPATH, "./../..").find_element(By.CSS_SELECTOR, EXPANDER).click()

        def children_shown(b):
            shown = [c for c in child_run_ids if b.find_elements(By.CSS_SELECTOR, f"a[href*='/runs/{c}']")]
            return shown or False

        shown = until(children_shown, f"shows parent run {parent_run_id} but none of its child runs")
        shot("runs.png")

        browser.get(f"{base}/runs/{parent_run_id}")

        def answer_table(b):
            tables = [
                t for t in b.find_elements(By.TAG_NAME, "table") if ANSWER_HEADER in t.get_attribute("textContent")
            ]
            return tables[0] if tables else False

        until(  # the page has loaded the run (its description, if any, renders with it)
            lambda b: b.find_elements(By.XPATH, f"//*[contains(text(), '{parent_run_id}')]"),
            f"does not open parent run {parent_run_id}",
        )
        try:
            table = WebDriverWait(browser, DESCRIPTION_S).until(answer_table)
        except TimeoutException:
            raise ServiceError(
                f"the MLflow UI at {ui_url} shows no answer table in the description of parent run {parent_run_id}"
            ) from None
        for more in browser.find_elements(By.XPATH, "//*[normalize-space(text())='Show more']"):
            more.click()  # the description unfolds
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", table)
        text = table.get_attribute("textContent") or ""
        absent = [e for e in expected if e not in text]
        if absent:
            raise ServiceError(f"the answer table of parent run {parent_run_id} lacks {absent[0]!r}")
        shot("answer.png")

        if plot is not None:
            browser.get(f"{base}/runs/{parent_run_id}/artifacts/plots/{plot}")
            until(
                lambda b: _image_shown(b, plot),
                f"does not show the artifact plots/{plot} of parent run {parent_run_id}",
            )
            shot("lr_star.png")

        trials = urllib.parse.quote(f"tags.`{TAG_ROLE}` = 'trial'")
        browser.get(f"{base}/runs?compareRunsMode=CHART&searchFilter={trials}")
        group_by = until(
            lambda b: b.find_element(By.CSS_SELECTOR, "[data-component-id*='groupbyselector']"),
            "has no Group by control in the chart view",
        )
        group_by.click()
        ActionChains(browser).send_keys(BATCH_SIZE).perform()
        option = until(
            lambda b: next(
                (o for o in b.find_elements(By.XPATH, "//*[@role='menuitemcheckbox']") if o.text == BATCH_SIZE), False
            ),
            f"offers no param {BATCH_SIZE} to group the runs by",
        )
        option.click()
        ActionChains(browser).send_keys(Keys.ESCAPE).perform()
        search = until(
            lambda b: b.find_element(By.CSS_SELECTOR, "input[placeholder='Search metric charts']"),
            "has no chart search in the chart view",
        )
        search.send_keys(VAL_LOSS)
        until(
            lambda b: b.find_elements(By.XPATH, "//*[starts-with(normalize-space(text()), 'Group: ')]"),
            f"does not group the trial runs by {BATCH_SIZE}",
        )
        shot("charts.png")
        return UiCheck(children_shown=len(shown), screenshots=tuple(shots))
    except ServiceError:
        shot("failed.png")
        raise
    finally:
        browser.quit()
