"""The web page in a real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from _fake_network import CHAIN_MODEL, expected_groups, fake_peers
from _gateway_helpers import API_KEY, CHROMIUM_FLAGS, start_gateway_command, wait_for_peers
from playwright.sync_api import Page, Route, expect, sync_playwright

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
MODEL = "smollm2-135m-instruct"  # what the real mesh serves


@contextmanager
def keyed_page(**context_options: Any) -> Iterator[Page]:
    """A page in headless Chromium whose local storage holds the gateway's API key."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            context = browser.new_context(**context_options)
            context.add_init_script(f"localStorage.setItem('dinet-api-key', {API_KEY!r})")
            yield context.new_page()
        finally:
            browser.close()


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed: run `make system-deps` (apt-get install chromium)")
    return path


def test_page_chats_and_shows_every_peer(gateway, mesh):
    wait_for_peers(gateway, len(mesh.nodes))
    node_ids = {n.peer_id for n in mesh.nodes}
    with keyed_page(viewport={"width": 1440, "height": 860}) as page:
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
        # Each token says, on hover, how likely the serving peer's model found it.
        token = answer.locator(".tok[data-logprob]").first
        assert float(token.get_attribute("data-logprob") or "1") <= 0.0
        assert "%" in (token.get_attribute("title") or "")

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "gateway-page.png"), full_page=True)

        page.check("#json-mode")  # JSON mode: a grammar keeps the answer to a JSON object
        page.fill("#prompt", "Describe a cat.")
        page.keyboard.press("Enter")
        json_answer = page.locator(".msg.assistant").nth(1)
        expect(json_answer.locator("[data-testid=answer-meta]")).to_be_visible(timeout=90_000)
        assert json_answer.locator(".text").inner_text().lstrip().startswith("{")
        assert outside == [], f"the page must work offline, but it loaded {outside}"


def test_the_page_marks_a_peer_reached_through_a_relay(gateway, mesh):
    """Which peers are relayed is the gateway's to say (its `/api/network`, checked against
    real links in tests/gateway/test_openai.py); this is about the page showing it. Nothing
    is relayed on loopback, so the page is given the gateway's real answer with one peer's
    link changed (a doctored reply, named so: the test is about rendering)."""
    wait_for_peers(gateway, len(mesh.nodes))
    relayed = mesh.nodes[1].peer_id
    with keyed_page() as page:

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


FAKE_PEERS = 1000


@pytest.fixture
def big_gateway(mesh, tmp_path):
    """A gateway that knows the real mesh and a FAKE directory of 1,000 validly signed
    manifests (tests/gateway/_fake_network.py), with three chains among them noted as used."""
    script = Path(__file__).with_name("_fake_network_gateway.py")
    home = tmp_path / "gateway"
    command = [sys.executable, str(script), str(home), mesh.bootstrap[0], API_KEY, str(FAKE_PEERS)]
    running = start_gateway_command(home, command)
    try:
        yield running
    finally:
        running.stop()


def test_the_page_draws_a_thousand_peers_by_region_and_model(big_gateway, mesh, tmp_path):
    fakes = fake_peers(FAKE_PEERS)  # the same seed as the gateway's: the same peers
    expected = expected_groups(fakes)
    wait_for_peers(big_gateway, FAKE_PEERS + len(mesh.nodes))
    with keyed_page(viewport={"width": 1600, "height": 1000}) as page:
        page.goto(big_gateway.url)

        # The drawing appears: one cluster per (region, model) group, one dot per peer in
        # each group it belongs to (a mesh node serving the embedding model is in two).
        dots = page.locator("#map g.group circle.peer")
        mesh_dots = len(mesh.nodes) + min(mesh.embedding_nodes, len(mesh.nodes))
        expect(dots).to_have_count(FAKE_PEERS + mesh_dots, timeout=30_000)
        for (region, model), count in expected.items():
            cluster = page.locator(f"#map g.group[data-region='{region}'][data-model='{model}']")
            expect(cluster).to_have_attribute("data-peers", str(count))
            relayed = sum(p.link == "relayed" for p in fakes if (p.region, p.model) == (region, model))
            expect(cluster.locator("circle.peer.relayed")).to_have_count(relayed)
        real = page.locator(f"#map g.group[data-model='{MODEL}']")
        expect(real).to_have_attribute("data-peers", str(len(mesh.nodes)))
        # Relayed peers get a dashed link of their own; the chains in use are drawn too.
        with_relayed = len({(p.region, p.model) for p in fakes if p.link == "relayed"})
        expect(page.locator("#map line.link.relayed")).to_have_count(with_relayed)
        expect(page.locator(f"#map path.chain[data-model='{CHAIN_MODEL}']")).to_have_count(3)
        # A big network is drawn, not listed: the table waits for a group to be chosen.
        expect(page.locator("#peers tbody tr[data-peer]")).to_have_count(0)

        # One group's peers are listed on demand.
        (region, model), count = expected.most_common(1)[0]
        page.locator(f"#map g.group[data-region='{region}'][data-model='{model}']").click()
        expect(page.locator("#peers tbody tr[data-peer]")).to_have_count(count, timeout=10_000)
        expect(page.locator("#list-title")).to_contain_text(f"{region} · {model}: {count}")

        # A real answer through the page, then the charts of the last hour have data.
        page.select_option("#model", MODEL)
        page.fill("#prompt", "Name a colour.")
        page.keyboard.press("Enter")
        meta = page.locator(".msg.assistant").last.locator("[data-testid=answer-meta]")
        expect(meta).to_be_visible(timeout=90_000)
        for chart in ("chart-tokens", "chart-requests", "chart-ttft"):
            expect(page.locator(f"#{chart}")).not_to_have_attribute("data-points", "0", timeout=15_000)
            expect(page.locator(f"#{chart}")).to_have_attribute("data-points", re.compile(r"^[1-9]"))
        expect(page.locator("#chart-ttft .point.p50")).not_to_have_count(0)

        # The one the docs show (docs/page-1000-peers.png comes from a run of this test).
        page.screenshot(path=str(tmp_path / "page-1000-peers.png"), full_page=True)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-1000-peers.png"), full_page=True)
        assert (tmp_path / "page-1000-peers.png").stat().st_size > 0
