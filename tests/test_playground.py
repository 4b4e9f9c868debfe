"""The playground in a real browser: Playwright driving the system's Chromium, headless,
against a real server on 127.0.0.1."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
playwright_api = pytest.importorskip("playwright.sync_api")

from tests.test_serve import metrics, server  # noqa: E402

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def system_chromium() -> str:
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    pytest.skip(f"no system Chromium ({', '.join(CHROMIUM_NAMES)}): apt-get install -y chromium")


def test_the_playground_streams_and_stops(run_dir: Path, tmp_path: Path) -> None:
    executable = system_chromium()
    with (
        server(run_dir, max_tokens=10**7, deadline_s=120) as url,
        playwright_api.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=executable, headless=True)
        page = browser.new_page()
        errors: list[str] = []
        requests: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(url + "/")
        page.fill("#prompt", "ROMEO:")
        page.fill("#max_tokens", "10000000")
        page.fill("#seed", "5")
        page.click("#generate")
        page.wait_for_function("Number(document.getElementById('output').dataset.pieces) >= 2")
        assert metrics(url)["active_rows"] == 1
        text = page.inner_text("#output")
        assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")
        page.click("#stop")
        page.wait_for_function("document.getElementById('stats').textContent === 'stopped'")
        deadline = time.monotonic() + 2
        while metrics(url)["active_rows"]:
            assert time.monotonic() < deadline, "the server still generates after Stop"
            time.sleep(0.02)
        page.fill("#max_tokens", "50")
        page.click("#generate")
        page.wait_for_function("document.getElementById('stats').textContent.includes('tokens/s')")
        assert page.inner_text("#stats").startswith("50 tokens in")
        page.screenshot(path=str(tmp_path / "playground.png"))
        browser.close()
    assert (tmp_path / "playground.png").stat().st_size > 1000
    assert errors == []
    assert requests and all(r.startswith(url + "/") for r in requests)  # nothing left the machine
