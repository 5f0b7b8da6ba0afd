"""A gateway that pays by payment channel: its channels in /api/payments and on the page."""

from __future__ import annotations

import httpx
from _gateway_helpers import API_KEY, start_gateway, wait_for_peers
from playwright.sync_api import expect
from test_page import MODEL, keyed_page

from dinet.home_crypto import write_secret
from dinet.node.local_mesh import start_node
from dinet.settle.keys import CHAIN_KEY

DEPOSIT = 10**17  # wei


def test_the_gateway_opens_a_channel_and_shows_its_spend(tmp_path, devnet):
    chain = ["--chain-rpc", devnet.rpc_url, "--channel-contract", devnet.contract]
    (tmp_path / "node").mkdir()
    write_secret(tmp_path / "node" / CHAIN_KEY, devnet.accounts[8].private_key)
    node = start_node(
        tmp_path / "node",
        extra_args=[*chain, "--require-channel", "--price", "0.001", "--wei-per-credit", str(10**15)],
    )
    (tmp_path / "gateway").mkdir()
    write_secret(tmp_path / "gateway" / CHAIN_KEY, devnet.accounts[9].private_key)
    gateway = start_gateway(
        tmp_path / "gateway",
        ["--bootstrap", node.addr, "--api-key", API_KEY, *chain, "--channel-deposit-wei", str(DEPOSIT)],
    )
    auth = {"authorization": f"Bearer {API_KEY}"}
    try:
        wait_for_peers(gateway, 1)
        assert httpx.get(f"{gateway.url}/api/payments", headers=auth).json() == {"channels": []}
        asked = {"model": MODEL, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 8}
        reply = httpx.post(f"{gateway.url}/v1/chat/completions", json=asked, headers=auth, timeout=60)
        assert reply.status_code == 200, reply.text
        (channel,) = httpx.get(f"{gateway.url}/api/payments", headers=auth).json()["channels"]
        assert (
            channel["role"] == "payer" and channel["peer"] == node.peer_id and channel["deposit"] == DEPOSIT
        )
        assert channel["owed"] > 0 and channel["vouched"] == channel["owed"] and not channel["closed"]
        with keyed_page() as page:
            page.goto(gateway.url)
            rows = page.locator("#payments tbody tr")
            expect(rows).to_have_count(1, timeout=30_000)
            expect(rows.first).to_contain_text("payer")
            expect(rows.first).to_contain_text(str(channel["owed"]))
    finally:
        gateway.stop()
        node.stop()
