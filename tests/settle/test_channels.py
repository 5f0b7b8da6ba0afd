"""Payment channels on a real chain (ganache): the happy paths for ETH and an ERC-20, and
every way a client or node might try to take what is not theirs, each losing."""

from __future__ import annotations

import pytest

from dinet.errors import ChainError
from dinet.settle import sign_voucher
from dinet.settle.chain import Channels
from dinet.settle.voucher import Voucher

from .conftest import Parties

ETH = 10**18
HOUR = 3600


def fees(channels: Channels) -> int:
    """What the last call's transactions cost their sender, in wei."""
    return sum(r["gasUsed"] * r["effectiveGasPrice"] for r in channels.last_receipts)


def voucher(parties: Parties, channel: str, amount: int) -> Voucher:
    return sign_voucher(parties.client.domain, channel, amount, parties.client_key)


def reason(excinfo: pytest.ExceptionInfo[ChainError]) -> str:
    return excinfo.value.reason


def test_eth_channel_pays_the_node_exactly_what_was_signed_and_refunds_the_rest(parties: Parties):
    client, node = parties.client, parties.node
    client_address, node_address = parties.client_key.address, node.key.address  # type: ignore[union-attr]
    client_before, node_before = client.balance(client_address), node.balance(node_address)
    client_fees = node_fees = 0

    channel = client.open(node_address, ETH, HOUR)
    client_fees += fees(client)
    state = client.state(channel)
    assert (state.sender, state.payee, state.deposit, state.paid, state.closed) == (
        client_address,
        node_address,
        ETH,
        0,
        False,
    )
    assert node.claim(voucher(parties, channel, ETH // 10)) == ETH // 10
    node_fees += fees(node)
    assert node.claim(voucher(parties, channel, ETH // 4)) == ETH // 4 - ETH // 10
    node_fees += fees(node)
    client.top_up(channel, ETH // 2, extend_s=2 * HOUR)
    client_fees += fees(client)
    assert client.state(channel).deposit == ETH + ETH // 2
    assert client.state(channel).expires_at >= state.expires_at + HOUR
    assert node.close(voucher(parties, channel, 13 * ETH // 10)) == 13 * ETH // 10 - ETH // 4
    node_fees += fees(node)

    assert client.state(channel).closed
    assert client.state(channel).paid == 13 * ETH // 10
    assert node.balance(node_address) == node_before + 13 * ETH // 10 - node_fees
    assert client.balance(client_address) == client_before - 13 * ETH // 10 - client_fees


def test_erc20_channel_pays_in_the_token(parties: Parties, token: str):
    client, node = parties.client, parties.node
    client_address, node_address = parties.client_key.address, node.key.address  # type: ignore[union-attr]
    client_before, node_before = client.balance(client_address, token), node.balance(node_address, token)
    contract_before = client.balance(client.contract, token)

    channel = client.open(node_address, 1000, HOUR, token=token)
    assert len(client.last_receipts) == 2  # approve, open
    assert client.state(channel).token == token
    assert client.balance(client.contract, token) == contract_before + 1000
    assert node.claim(voucher(parties, channel, 300)) == 300
    client.top_up(channel, 500)
    assert node.claim(voucher(parties, channel, 1200)) == 900
    assert node.close(voucher(parties, channel, 1400)) == 200

    assert node.balance(node_address, token) == node_before + 1400
    assert client.balance(client_address, token) == client_before - 1400
    assert client.balance(client.contract, token) == contract_before


def test_a_replayed_voucher_pays_once(parties: Parties):
    channel = parties.client.open(parties.node.key.address, ETH, HOUR)  # type: ignore[union-attr]
    once = voucher(parties, channel, ETH // 5)
    assert parties.node.claim(once) == ETH // 5
    with pytest.raises(ChainError) as excinfo:
        parties.node.claim(once)
    assert reason(excinfo) == "stale voucher"
    assert parties.node.state(channel).paid == ETH // 5


def test_a_lowered_voucher_pays_nothing(parties: Parties):
    channel = parties.client.open(parties.node.key.address, ETH, HOUR)  # type: ignore[union-attr]
    parties.node.claim(voucher(parties, channel, ETH // 2))
    with pytest.raises(ChainError) as excinfo:
        parties.node.claim(voucher(parties, channel, ETH // 3))
    assert reason(excinfo) == "stale voucher"
    assert parties.node.state(channel).paid == ETH // 2


def test_a_voucher_for_another_channel_does_not_verify(parties: Parties):
    node = parties.node.key.address  # type: ignore[union-attr]
    small = parties.client.open(node, ETH // 10, HOUR)
    big = parties.client.open(node, ETH, HOUR)
    signed_for_small = voucher(parties, small, ETH // 20)
    moved = Voucher(channel=big, amount=ETH // 20, signature=signed_for_small.signature)
    with pytest.raises(ChainError) as excinfo:
        parties.node.claim(moved)
    assert reason(excinfo) == "bad signature"
    assert parties.node.state(big).paid == 0


def test_another_node_cannot_claim_a_voucher_for_this_nodes_channel(parties: Parties):
    channel = parties.client.open(parties.node.key.address, ETH, HOUR)  # type: ignore[union-attr]
    with pytest.raises(ChainError) as excinfo:
        parties.other_node.claim(voucher(parties, channel, ETH // 2))
    assert reason(excinfo) == "not payee"
    with pytest.raises(ChainError):
        parties.client.claim(voucher(parties, channel, ETH // 2))  # nor the sender
    assert parties.node.state(channel).paid == 0


def test_closing_with_a_stale_voucher_keeps_the_highest_claim(parties: Parties):
    client, node = parties.client, parties.node
    client_address = parties.client_key.address
    channel = client.open(node.key.address, ETH, HOUR)  # type: ignore[union-attr]
    node.claim(voucher(parties, channel, 6 * ETH // 10))
    before = client.balance(client_address)
    assert node.close(voucher(parties, channel, ETH // 10)) == 0
    state = client.state(channel)
    assert state.closed and state.paid == 6 * ETH // 10
    assert client.balance(client_address) == before + 4 * ETH // 10  # the client sent no transaction


def test_a_node_may_close_without_a_voucher(parties: Parties):
    channel = parties.client.open(parties.node.key.address, ETH, HOUR)  # type: ignore[union-attr]
    assert parties.node.close(None, channel=channel) == 0
    assert parties.node.state(channel).closed


def test_reclaim_before_the_timeout_fails(parties: Parties):
    channel = parties.client.open(parties.node.key.address, ETH, HOUR)  # type: ignore[union-attr]
    with pytest.raises(ChainError) as excinfo:
        parties.client.reclaim(channel)
    assert reason(excinfo) == "not expired"
    assert not parties.client.state(channel).closed


def test_reclaim_after_the_timeout_refunds_the_rest_and_ends_the_channel(parties: Parties):
    client, node = parties.client, parties.node
    client_address = parties.client_key.address
    channel = client.open(node.key.address, ETH, HOUR)  # type: ignore[union-attr]
    node.claim(voucher(parties, channel, ETH // 4))
    late = voucher(parties, channel, ETH // 2)
    with pytest.raises(ChainError):
        node.reclaim(channel)  # the payee cannot take the sender's refund
    parties.devnet.advance(HOUR + 1)
    before = client.balance(client_address)
    assert client.reclaim(channel) == 3 * ETH // 4
    assert client.balance(client_address) == before + 3 * ETH // 4 - fees(client)
    assert client.state(channel).closed
    with pytest.raises(ChainError) as excinfo:
        node.claim(late)
    assert reason(excinfo) == "channel closed"
    with pytest.raises(ChainError):
        client.reclaim(channel)


def test_a_voucher_over_the_deposit_pays_nothing(parties: Parties):
    channel = parties.client.open(parties.node.key.address, ETH, HOUR)  # type: ignore[union-attr]
    with pytest.raises(ChainError) as excinfo:
        parties.node.claim(voucher(parties, channel, ETH + 1))
    assert reason(excinfo) == "over deposit"
    with pytest.raises(ChainError):
        parties.node.close(voucher(parties, channel, 2 * ETH))
    assert parties.node.state(channel).paid == 0


def test_a_forged_voucher_pays_nothing(parties: Parties):
    channel = parties.client.open(parties.node.key.address, ETH, HOUR)  # type: ignore[union-attr]
    forged = sign_voucher(parties.client.domain, channel, ETH // 2, parties.forger)
    with pytest.raises(ChainError) as excinfo:
        parties.node.claim(forged)
    assert reason(excinfo) == "bad signature"
    with pytest.raises(ChainError):
        parties.node.close(forged)
    assert parties.node.state(channel).paid == 0


def test_the_high_s_twin_of_a_valid_voucher_is_refused(parties: Parties):
    """secp256k1 signatures are malleable: (r, n - s, v ^ 1) signs the same digest. The
    contract accepts only the low-s form, so a voucher has one encoding."""
    channel = parties.client.open(parties.node.key.address, ETH, HOUR)  # type: ignore[union-attr]
    good = voucher(parties, channel, ETH // 2)
    raw = bytes.fromhex(good.signature[2:])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = (n - int.from_bytes(raw[32:64], "big")).to_bytes(32, "big")
    twin = Voucher(channel, good.amount, "0x" + (raw[:32] + high_s + bytes([raw[64] ^ 1])).hex())
    with pytest.raises(ChainError) as excinfo:
        parties.node.claim(twin)
    assert reason(excinfo) == "bad signature"
    assert parties.node.claim(good) == ETH // 2


def test_no_channel_and_no_key_are_typed_errors(parties: Parties):
    with pytest.raises(ChainError, match="no such channel"):
        parties.client.state("0x" + "00" * 32)
    viewer = Channels(parties.devnet.rpc_url, parties.devnet.contract)
    with pytest.raises(ChainError, match="no chain key"):
        viewer.open(parties.node.key.address, ETH, HOUR)  # type: ignore[union-attr]
