"""What an annotator sees: Label Studio 1.23.2's labelling screen, rendered in a real headless
Chromium, shows the FreeSel flag from the task data through label_config.xml's <Header>.

Set FREESEL_SCREENSHOT_OUT=<file.png> to keep the screenshot (docs/annotator-view.png is one)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import missing_prerequisite
from harness.label_studio import LABEL_CONFIG
from tests.test_end_to_end import write_group

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def browser_page(label_studio, tmp_path):
    """A headless Chromium page logged in to Label Studio (the test session's cookie)."""
    executable = shutil.which("chromium")
    if executable is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        missing_prerequisite(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_cookies([
                {"name": cookie.name, "value": cookie.value, "url": label_studio.url}
                for cookie in label_studio.session.cookies
            ])
            yield context.new_page()
        finally:
            browser.close()


def test_labelling_screen_shows_the_freesel_flag_of_picked_and_not_picked_tasks(label_studio, browser_page, tmp_path):
    ls = label_studio
    project = ls.create_project("FreeSel annotator view", LABEL_CONFIG)
    tasks = ls.upload_images(project["id"], write_group(tmp_path / "img", "red", 2, (200, 60, 40), "stripes", 5))
    flags = {
        tasks[0]["id"]: "FreeSel pick",
        tasks[1]["id"]: f"FreeSel: not picked (near-duplicate of task {tasks[0]['id']})",
    }
    for task in tasks:  # what the backend writes (tests/test_main_command.py checks that it does)
        data = {**task["data"], "freesel": flags[task["id"]]}
        ls.api("PATCH", f"/api/tasks/{task['id']}/", json={"data": data}).raise_for_status()

    for task_id, flag in flags.items():
        browser_page.goto(f"{ls.url}/projects/{project['id']}/data?task={task_id}")
        header = browser_page.get_by_text(flag, exact=True)
        header.wait_for(state="visible", timeout=90_000)
        browser_page.locator("img[src*='/data/upload/']").first.wait_for(state="visible", timeout=30_000)
        if task_id == tasks[0]["id"]:
            shot = Path(os.environ.get("FREESEL_SCREENSHOT_OUT") or tmp_path / "annotator-view.png")
            browser_page.wait_for_timeout(1000)  # let the image finish drawing
            browser_page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
