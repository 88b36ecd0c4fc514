"""Screenshots of a running review app (queue, top case, lead page) in Debian chromium.

Used by ``riskstream demo --screenshots DIR`` so a reader can see the pages on the demo's real
cases without starting anything. Opening the top case claims it for the user signing in, as a
browser would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def capture(url: str, user: str, password: str, out: Path) -> list[Path]:
    """Sign in as ``user`` and save queue.png, case.png (the top case) and, for a lead,
    lead.png under ``out``; returns the files written."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.goto(url + "/login")
            page.fill("input[name=username]", user)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_selector("#rows")
            for name, action in (
                ("queue.png", None),
                ("case.png", "#rows tr a"),
                ("lead.png", "a[href='/lead']"),
            ):
                if action is not None:
                    if page.locator(action).count() == 0:
                        continue
                    page.locator(action).first.click()
                    page.wait_for_load_state()
                path = out / name
                page.screenshot(path=str(path), full_page=True)
                written.append(path)
        finally:
            browser.close()
    return written
