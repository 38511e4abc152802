"""The search page in a real browser: Debian's chromium driven by Playwright.

Types a query, sees thumbnails load, uploads an image, clicks a result, and takes a
screenshot (to CLIPFORGE_SCREENSHOT too, when set: docs/search-page.png comes from it).
Skipped where Playwright or a system chromium is missing (.ci/run installs both).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def server(searcher):
    import uvicorn

    from clipforge.serve.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(searcher), port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.mark.skipif(CHROMIUM is None, reason="no system chromium")
def test_search_page_in_chromium(server, searcher, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(server + "/")
        page.fill("#q", "a red circle")
        page.press("#q", "Enter")
        page.wait_for_selector(".hit img")
        # Every thumbnail decoded (naturalWidth > 0), with a score and a caption.
        page.wait_for_function(
            "[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        assert page.locator(".hit").count() == 24
        assert 'results for "a red circle"' in page.inner_text("#status")
        first = page.locator(".hit").first
        assert float(first.locator(".score").inner_text()) <= 1
        shot = tmp_path / "search-page.png"
        page.screenshot(path=str(shot))
        # Upload an image: the grid is replaced by images like it, itself first.
        row = searcher.index.rows[5]
        page.set_input_files("#file", row["path"])
        page.wait_for_function("document.querySelector('#status').textContent.includes('.png')")
        assert page.locator(".hit .caption").first.inner_text() == row["caption"]
        # A click on a result searches for images similar to it.
        page.locator(".hit").nth(1).click()
        page.wait_for_function(
            "document.querySelector('#status').textContent.includes('like item')"
        )
        assert page.locator(".hit").count() == 24
        browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("CLIPFORGE_SCREENSHOT"):
        shutil.copy(shot, os.environ["CLIPFORGE_SCREENSHOT"])
