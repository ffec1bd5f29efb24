"""The /review page in headless Debian chromium (Playwright): resolve an item by click."""

from __future__ import annotations

import os

import pytest

from tests.serve.conftest import DEVICE_TOKEN, REVIEWER_TOKEN, image_bytes

pytestmark = pytest.mark.slow
CHROMIUM_ENV = "SKUSCALE_TEST_CHROMIUM"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def chromium():
    path = os.environ.get(CHROMIUM_ENV)
    if not path:
        pytest.skip(f"{CHROMIUM_ENV} is not set (CI sets it to /usr/bin/chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _resolved_metric(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('skuscale_resolutions_total{decision="sku"}'):
            return float(line.split()[-1])
    return 0.0


def test_resolve_by_click_and_by_key(server, chromium):
    with server.client(DEVICE_TOKEN) as dev:
        events = [dev.post("/v1/recognize", files={"file": ("x.jpg", image_bytes("val", "Banana", i))}).json()
                  for i in range(4)]
    page = chromium.new_page()
    page.goto(server.url + "/review")
    page.fill("#token", "wrong")
    page.click("#login")
    assert "not a reviewer token" in page.content()
    page.fill("#token", REVIEWER_TOKEN)
    page.click("#login")
    page.wait_for_selector(".item")
    assert page.locator(".item").count() == 4
    first, second, third, fourth = events
    item = page.locator(f"#item-{first['event_id']}")
    # The query image and the candidates' reference images load (the cookie authorises them).
    # Wait until the browser has finished with them: a broken image is complete with width 0.
    for selector in (f"#item-{first['event_id']} img.query", f"#item-{first['event_id']} .cand img"):
        page.wait_for_function("sel => { const img = document.querySelector(sel); return img && img.complete; }",
                               arg=selector)
    assert item.locator("img.query").evaluate("img => img.naturalWidth") > 0
    assert item.locator(".cand img").first.evaluate("img => img.naturalWidth") > 0
    assert item.locator(".cand").count() == 3
    chosen = first["candidates"][1]["sku"]
    with server.client(REVIEWER_TOKEN) as rev:
        before = _resolved_metric(rev)
        item.locator(".confirm").nth(1).click()
        page.wait_for_selector(f"#item-{first['event_id']}", state="detached")
        ev = rev.get(f"/v1/events/{first['event_id']}").json()
        assert ev["status"] == "final" and ev["final_sku"] == chosen and ev["resolution"] == "sku"
        assert _resolved_metric(rev) == before + 1
        # Keyboard: "1" confirms the top candidate of the active item.
        page.keyboard.press("1")
        page.wait_for_selector(f"#item-{second['event_id']}", state="detached")
        ev = rev.get(f"/v1/events/{second['event_id']}").json()
        assert ev["final_sku"] == second["candidates"][0]["sku"]
        assert _resolved_metric(rev) == before + 2
        # The search box resolves with any catalogue SKU; an unknown one is refused and the item stays.
        item = page.locator(f"#item-{third['event_id']}")
        item.locator(".search").fill("No-Such-SKU")
        item.locator(".other").click()
        page.wait_for_selector(f"#item-{third['event_id']} .error:has-text('Not saved')")
        item.locator(".search").fill("Red-Beet")
        item.locator(".search").press("Enter")
        page.wait_for_selector(f"#item-{third['event_id']}", state="detached")
        assert rev.get(f"/v1/events/{third['event_id']}").json()["final_sku"] == "Red-Beet"
        # "New product" asks for a name.
        page.once("dialog", lambda dialog: dialog.accept("Oat-Drink"))
        page.locator(f"#item-{fourth['event_id']} .new").click()
        page.wait_for_selector("#empty")
        ev = rev.get(f"/v1/events/{fourth['event_id']}").json()
        assert ev["resolution"] == "new_product" and ev["proposed_sku"] == "Oat-Drink"
        assert rev.get("/v1/review").json()["total"] == 0
        page.reload()
        assert page.locator(".item").count() == 0
