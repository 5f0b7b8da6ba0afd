"""The web page in a real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _gateway_helpers import API_KEY, wait_for_peers
from playwright.sync_api import Route, expect, sync_playwright

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-extensions",
    "--no-first-run",
]


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed: run `make system-deps` (apt-get install chromium)")
    return path


def test_page_chats_and_shows_every_peer(gateway, mesh):
    wait_for_peers(gateway, len(mesh.nodes))
    node_ids = {n.peer_id for n in mesh.nodes}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 860})
            context.add_init_script(f"localStorage.setItem('dinet-api-key', {API_KEY!r})")
            page = context.new_page()
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(gateway.url) else None)
            page.goto(gateway.url)

            rows = page.locator("#peers tbody tr[data-peer]")
            expect(rows).to_have_count(len(node_ids), timeout=30_000)
            assert {rows.nth(i).get_attribute("data-peer") for i in range(rows.count())} == node_ids
            # On loopback the gateway reaches every peer directly, and each row says so.
            direct = page.locator("#peers tr[data-link='direct'] td.link")
            expect(direct).to_have_text(["direct"] * len(node_ids))
            expect(page.locator("#model")).to_have_value("smollm2-135m-instruct")

            page.fill("#prompt", "Name three colours.")
            page.keyboard.press("Enter")
            answer = page.locator(".msg.assistant").last
            meta = answer.locator("[data-testid=answer-meta]")
            expect(meta).to_be_visible(timeout=90_000)
            assert answer.locator(".text").inner_text().strip()
            assert int(answer.get_attribute("data-chunks") or 0) > 1, "tokens should stream in"
            served_by = answer.get_attribute("data-peer")
            assert served_by in node_ids
            assert "tok/s" in meta.inner_text() and "served by" in meta.inner_text()
            # The peer that answered is marked in the live list, which refreshes by itself.
            served_row = page.locator(f"#peers tr.served[data-peer='{served_by}']")
            expect(served_row).to_have_count(1, timeout=10_000)

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "gateway-page.png"), full_page=True)
            assert outside == [], f"the page must work offline, but it loaded {outside}"
        finally:
            browser.close()


def test_the_page_marks_a_peer_reached_through_a_relay(gateway, mesh):
    """Which peers are relayed is the gateway's to say (its `/api/network`, checked against
    real links in tests/gateway/test_openai.py); this is about the page showing it. Nothing
    is relayed on loopback, so the page is given the gateway's real answer with one peer's
    link changed (a doctored reply, named so: the test is about rendering)."""
    wait_for_peers(gateway, len(mesh.nodes))
    relayed = mesh.nodes[1].peer_id
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            context = browser.new_context()
            context.add_init_script(f"localStorage.setItem('dinet-api-key', {API_KEY!r})")
            page = context.new_page()

            def doctored(route: Route) -> None:
                snapshot = route.fetch().json()
                for peer in snapshot["peers"]:
                    if peer["peer_id"] == relayed:
                        peer["link"], peer["reach"] = "relayed", "private"
                route.fulfill(json=snapshot)

            page.route("**/api/network", doctored)
            page.goto(gateway.url)
            cell = page.locator(f"#peers tr[data-peer='{relayed}'] td.link")
            expect(cell).to_have_text("relayed", timeout=30_000)
            assert "through a relay" in (cell.get_attribute("title") or "")
            assert "private" in (cell.get_attribute("title") or "")
            others = page.locator(f"#peers tr[data-link='direct']:not([data-peer='{relayed}'])")
            expect(others).to_have_count(len(mesh.nodes) - 1)
        finally:
            browser.close()
