"""Headless Chromium for tests: open a page, screenshot it, check its images rendered.

Uses Debian's chromium through playwright's sync API (playwright never downloads a
browser here). Tests that need it skip when ``SKUSCALE_TEST_CHROMIUM`` is unset;
CI sets it to ``/usr/bin/chromium``.

    from tests.browser import assert_images_rendered, open_page

    with open_page(html_path.as_uri()) as page:
        page.screenshot(path=tmp_path / "shot.png", full_page=True)
        assert_images_rendered(page, minimum=3)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CHROMIUM_ENV = "SKUSCALE_TEST_CHROMIUM"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]


def chromium_path() -> str:
    """The Chromium executable from ``$SKUSCALE_TEST_CHROMIUM``; skips the test when unset."""
    path = os.environ.get(CHROMIUM_ENV)
    if not path:
        pytest.skip(f"{CHROMIUM_ENV} is not set (CI sets it to /usr/bin/chromium)")
    return path


@contextmanager
def open_page(url: str, *, width: int = 1280, height: int = 900, timeout_ms: int = 30_000) -> Iterator:
    """A loaded playwright ``Page`` for ``url`` (``file://``, ``http://``); closes the browser on exit.

    Waits for the ``load`` event, so every ``img`` has been fetched or decoded.
    """
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="load", timeout=timeout_ms)
            yield page
        finally:
            browser.close()


def image_sizes(page) -> list[dict]:
    """``src`` prefix, ``naturalWidth`` and ``naturalHeight`` of every ``img`` on the page."""
    return page.eval_on_selector_all(
        "img",
        "els => els.map(e => ({src: e.src.slice(0, 60), width: e.naturalWidth, height: e.naturalHeight, "
        "complete: e.complete}))",
    )


def assert_images_rendered(page, *, minimum: int = 1) -> list[dict]:
    """Assert the page has at least ``minimum`` images and every one decoded to a non-zero size."""
    images = image_sizes(page)
    assert len(images) >= minimum, f"expected at least {minimum} images, found {len(images)}"
    broken = [img for img in images if not img["complete"] or img["width"] <= 0 or img["height"] <= 0]
    assert not broken, f"{len(broken)} of {len(images)} images did not render: {broken[:5]}"
    return images
