"""Answers paid by payment channels on a real devnet: real nodes and a client, vouchers with
every receipt, channels closed on chain to the wei; and what a client or node gains by cheating."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from tests.helpers import chat

from dinet.client import _records
from dinet.client.ask import Answer, ask
from dinet.client.network import Network, open_network
from dinet.client.options import AskOptions
from dinet.client.payments import ChannelBook
from dinet.config import ClientSettings
from dinet.errors import NoCapablePeer
from dinet.home_crypto import write_secret
from dinet.ledger import Ledger
from dinet.ledger.store import ChannelPayment, ChannelRecord
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.settle.chain import Channels, deploy_test_token
from dinet.settle.devnet import Devnet
from dinet.settle.keys import CHAIN_KEY, ChainKey
from dinet.settle.voucher import sign_voucher, wei_of
from dinet.wire.ids import PeerId
from dinet.wire.messages import ChannelVoucher
from dinet.wire.receipt import ReceiptBody

PRICE, PROMPT_PRICE = 0.001, 0.0002  # credits per token
WEI_PER_CREDIT = 10**15
DEPOSIT = 10**17  # wei


@pytest.fixture(scope="module")
def devnet():
    with Devnet(accounts=17) as chain:
        yield chain


def give_key(home: Path, key: ChainKey) -> None:
    """Put a funded devnet account in a home, as its chain key."""
    home.mkdir(parents=True, exist_ok=True)
    write_secret(home / CHAIN_KEY, key.private_key)


def chain_args(devnet: Devnet) -> list[str]:
    return ["--chain-rpc", devnet.rpc_url, "--channel-contract", devnet.contract]


def node_args(devnet: Devnet) -> list[str]:
    return [
        *chain_args(devnet), "--wei-per-credit", str(WEI_PER_CREDIT), "--require-channel",
        "--price", str(PRICE), "--prompt-price", str(PROMPT_PRICE),
    ]  # fmt: skip


def paid_node(
    home: Path, devnet: Devnet, key: ChainKey, bootstrap: list[str] = (), extra: list[str] = ()
) -> NodeProcess:  # type: ignore[assignment]
    give_key(home, key)
    return start_node(home, bootstrap=list(bootstrap), extra_args=[*node_args(devnet), *extra])


def client_settings(
    home: Path, devnet: Devnet, key: ChainKey, bootstrap: list[str], **extra
) -> ClientSettings:
    give_key(home, key)
    return ClientSettings(
        home=home, bootstrap=bootstrap, mdns=False, chain_rpc=devnet.rpc_url,
        channel_contract=devnet.contract, channel_deposit_wei=DEPOSIT, **extra,
    )  # fmt: skip


def din(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "dinet", *args, "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def receipts_wei(home: Path, node: PeerId) -> int:
    """What the receipts a client keeps for `node` sum to, in wei at the node's rate."""
    with Ledger.in_home(home) as ledger:
        bodies = [s.body for s in ledger.receipts() if s.body.node == node]
    return sum(wei_of(b.amount, WEI_PER_CREDIT) for b in bodies)


async def ask_one(network: Network, prompt: str, options: AskOptions | None = None) -> Answer:
    async with aclosing(ask(network, chat(prompt, max_tokens=12), options or AskOptions())) as events:
        async for event in events:
            if isinstance(event, Answer):
                return event
    raise AssertionError("no answer")


async def both_known(network: Network) -> None:
    with trio.fail_after(30):
        while len(network.candidates(None, None)) < 2:
            await network.discover(None, None, timeout=5, want=2)


async def test_twenty_answers_on_two_nodes_settle_on_chain_to_the_wei(tmp_path, devnet):
    a = paid_node(tmp_path / "a", devnet, devnet.accounts[1])
    b = paid_node(tmp_path / "b", devnet, devnet.accounts[2], bootstrap=[a.addr])
    nodes = {a.peer_id: a, b.peer_id: b}
    addresses = {a.peer_id: devnet.accounts[1].address, b.peer_id: devnet.accounts[2].address}
    home = tmp_path / "client"
    settings = client_settings(home, devnet, devnet.accounts[3], [a.addr, b.addr])
    viewer = Channels(devnet.rpc_url, devnet.contract)
    try:
        async with open_network(settings) as network:
            await both_known(network)
            served: list[PeerId] = []
            for i in range(19):  # alternating between the two nodes
                only = a.peer_id if i % 2 == 0 else b.peer_id
                answer = await ask_one(
                    network, f"Question {i}: name a colour.", AskOptions(only_peers=(only,))
                )
                assert answer.peer_id == only and len(answer.receipts) == 1
                assert answer.receipts[0].voucher is not None
                served.append(answer.peer_id)
            # The twentieth: its first peer is killed mid-answer and the other finishes it.
            attempts: list[str] = []
            received = 0
            async for event in ask(network, chat("Write a short poem about rivers.", max_tokens=40),
                                   on_attempt=attempts.append):  # fmt: skip
                if isinstance(event, Answer):
                    last = event
                    continue
                received += 1
                if received == 5 and len(attempts) == 1:
                    victim = nodes[PeerId(attempts[0])]
                    os.kill(victim.process.pid, signal.SIGKILL)
            assert last.peer_id != victim.peer_id and len(last.receipts) == 1
            with Ledger.in_home(home) as ledger:
                channels = {c.payee: c.channel for c in ledger.channels()}
        assert set(channels) == {a.peer_id, b.peer_id}  # one channel opened to each node
        # Both nodes close their channels with the highest voucher in their ledgers (the
        # killed one from its home, as its operator would after a crash).
        before = {p: viewer.balance(addresses[p]) for p in nodes}
        first_block = devnet.web3().eth.block_number + 1
        for node in nodes.values():
            closed = din("pay", "close", "--home", str(node.home), *chain_args(devnet))["closed"]
            assert [c["channel"] for c in closed] == [channels[node.peer_id]]
        for peer_id in nodes:
            state = viewer.state(channels[peer_id])
            owed = receipts_wei(home, peer_id)
            assert owed > 0 and state.closed
            assert state.paid == owed  # the chain paid the receipts' sum, to the wei
            gained = viewer.balance(addresses[peer_id]) - before[peer_id]
            gas = _gas_spent(devnet, addresses[peer_id], first_block)
            assert gained + gas == owed
    finally:
        for node in nodes.values():
            node.stop()


def _gas_spent(devnet: Devnet, address: str, first_block: int) -> int:
    """Wei the account spent on gas in its transactions from block `first_block` on."""
    w3 = devnet.web3()
    spent = 0
    for number in range(first_block, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True).transactions:
            if tx["from"].lower() == address.lower():
                receipt = w3.eth.get_transaction_receipt(tx["hash"])
                spent += receipt["gasUsed"] * receipt["effectiveGasPrice"]
    return spent


# -- what cheating gains -------------------------------------------------------------------

# Accounts: 0 deployed the contract, 1-3 the test above, 4 the node below, 5-9 its clients,
# 10-11 the crash test, 12 din pay, 13-14 and 16 the token test, 15 the top-up test.


@pytest.fixture(scope="module")
def paid(tmp_path_factory, devnet):
    node = paid_node(tmp_path_factory.mktemp("paid"), devnet, devnet.accounts[4])
    yield node
    node.stop()


def node_receipts_from(node: NodeProcess, client: PeerId) -> int:
    with Ledger.in_home(node.home) as ledger:
        return sum(1 for s in ledger.receipts() if s.body.client == client)


async def test_a_channel_running_low_is_topped_up_by_the_client(tmp_path, devnet, paid):
    settings = client_settings(tmp_path, devnet, devnet.accounts[15], [paid.addr])
    settings = settings.model_copy(update={"channel_deposit_wei": 6 * 10**13})  # two requests' worst case
    async with open_network(settings) as network:
        await network.discover(None, None, timeout=10)
        for prompt in ("Hi.", "Name a colour.", "Hello."):
            await ask_one(network, prompt)
    with Ledger.in_home(tmp_path) as ledger:
        (record,) = ledger.channels()
    state = Channels(devnet.rpc_url, devnet.contract).state(record.channel)
    assert state.deposit == 12 * 10**13  # topped up once, by the deposit, before the third


async def test_a_client_without_a_channel_or_past_its_deposit_is_refused_before_serving(
    tmp_path, devnet, paid
):
    bare = ClientSettings(home=tmp_path / "bare", bootstrap=[paid.addr], mdns=False)  # no chain at all
    async with open_network(bare) as network:
        await network.discover(None, None, timeout=10)
        with pytest.raises(NoCapablePeer, match="paid by a payment channel"):
            await ask_one(network, "Hi.")
    poor = client_settings(tmp_path / "poor", devnet, devnet.accounts[5], [paid.addr])
    poor = poor.model_copy(update={"channel_deposit_wei": 1000})
    async with open_network(poor) as network:
        await network.discover(None, None, timeout=10)
        with pytest.raises(NoCapablePeer, match="deposit has 1000 wei left"):
            await ask_one(network, "Hi.")
        assert node_receipts_from(paid, network.peer_id) == 0  # nothing was served


def tampered(monkeypatch, change) -> None:
    """Make this process's client send `change(book, payment)` instead of its honest voucher."""
    honest = ChannelBook.payment

    async def payment(self: ChannelBook, channel: str, body: ReceiptBody, terms) -> ChannelPayment:
        return change(self, await honest(self, channel, body, terms))

    monkeypatch.setattr(ChannelBook, "payment", payment)


def resigned(
    book: ChannelBook,
    paid: ChannelPayment,
    *,
    channel: str | None = None,
    amount: int | None = None,
    key: ChainKey | None = None,
) -> ChannelPayment:
    assert paid.voucher is not None and book._channels.key is not None
    channel = channel or paid.channel
    amount = paid.voucher.amount if amount is None else amount
    signed = sign_voucher(book._channels.domain, channel, amount, key or book._channels.key)
    voucher = ChannelVoucher(channel=channel, amount=amount, signature=signed.signature)
    return ChannelPayment(paid.channel, paid.wei, voucher)


@pytest.mark.parametrize(
    ("account", "cheat"),
    [
        (6, lambda book, paid: resigned(book, paid, amount=paid.voucher.amount - 1)),  # lowered
        (7, lambda book, paid: resigned(book, paid, channel="0x" + "ab" * 32)),  # for another channel
        (8, lambda book, paid: resigned(book, paid, key=ChainKey.generate())),  # forged: another signer
    ],
    ids=["lowered", "other-channel", "forged"],
)
async def test_a_bad_voucher_stops_the_channel_until_a_good_one_comes(
    tmp_path, devnet, paid, monkeypatch, account, cheat
):
    settings = client_settings(tmp_path, devnet, devnet.accounts[account], [paid.addr])
    async with open_network(settings) as network:
        await network.discover(None, None, timeout=10)
        await ask_one(network, "Hi.")  # honest: served and vouched
        tampered(monkeypatch, cheat)
        await ask_one(network, "Hello.")  # served; its voucher is refused by the node
        with pytest.raises(NoCapablePeer, match="not vouched for"):
            await ask_one(network, "Hey.")
    assert node_receipts_from(paid, network.peer_id) == 2
    with Ledger.in_home(paid.home) as ledger:
        (channel,) = [c.channel for c in ledger.channels() if c.payer == network.peer_id]
        totals = ledger.channel_totals(channel)
    assert totals.vouched < totals.owed  # the node kept only the honest voucher


async def test_a_channel_serves_only_the_client_that_opened_it(tmp_path, devnet, paid):
    owner = client_settings(tmp_path / "owner", devnet, devnet.accounts[9], [paid.addr])
    async with open_network(owner) as network:
        await network.discover(None, None, timeout=10)
        await ask_one(network, "Hi.")
    with Ledger.in_home(tmp_path / "owner") as ledger:
        (record,) = ledger.channels()
    thief = ClientSettings(home=tmp_path / "thief", bootstrap=[paid.addr], mdns=False)
    async with open_network(thief) as network:
        await network.discover(None, None, timeout=10)
        with Ledger.in_home(tmp_path / "thief") as ledger:
            ledger.add_channel(replace(record, payer=network.peer_id))
        network.payments = ChannelBook(Channels(devnet.rpc_url, devnet.contract, ChainKey.generate()),
                                       network.ledger, network.peer_id)  # fmt: skip
        with pytest.raises(NoCapablePeer, match="belongs to another client"):
            await ask_one(network, "Hi.")


async def test_a_node_killed_between_serving_and_storing_a_voucher_loses_nothing(
    tmp_path, devnet, monkeypatch
):
    node = paid_node(tmp_path / "node", devnet, devnet.accounts[10])
    home = tmp_path / "client"
    settings = client_settings(home, devnet, devnet.accounts[11], [node.addr])
    honest = _records.Records.settle

    async def settle_then_kill(self, *args, **kwargs) -> None:
        await honest(self, *args, **kwargs)  # the voucher has just been sent: the node may not have stored it
        os.kill(node.process.pid, signal.SIGKILL)

    try:
        async with open_network(settings) as network:
            await network.discover(None, None, timeout=10)
            await ask_one(network, "Hi.")
            monkeypatch.setattr(_records.Records, "settle", settle_then_kill)
            await ask_one(network, "Name a colour.")
            monkeypatch.undo()
        node.stop()  # reaps the killed process
        node = start_node(node.home, extra_args=node_args(devnet))  # the same home, after the crash
        async with open_network(settings.model_copy(update={"bootstrap": [node.addr]})) as network:
            await network.discover(None, None, timeout=10)
            await ask_one(network, "Hello again.")  # its voucher covers what the node may have missed
        din("pay", "close", "--home", str(node.home), *chain_args(devnet))
        with Ledger.in_home(home) as ledger:
            (channel,) = [c.channel for c in ledger.channels()]
        state = Channels(devnet.rpc_url, devnet.contract).state(channel)
        assert state.closed and state.paid == receipts_wei(home, node.peer_id)
    finally:
        node.stop()


def test_din_pay_opens_tops_up_shows_and_reclaims_a_channel_after_its_timeout(tmp_path, devnet, paid):
    home = tmp_path / "client"
    give_key(home, devnet.accounts[12])
    where = ["--home", str(home), *chain_args(devnet)]
    opened = din("pay", "open", paid.peer_id, "--deposit", "5000", "--bootstrap", paid.addr, "--no-mdns",
                 "--channel-timeout-s", "600", *where)  # fmt: skip
    channel = opened["channel"]
    assert din("pay", "top-up", channel, "--amount", "3000", *where)["deposit"] == 8000
    (row,) = din("pay", "status", *where)["channels"]
    assert row["channel"] == channel and row["role"] == "payer" and row["peer"] == paid.peer_id
    assert (row["deposit"], row["owed"], row["paid"], row["closed"]) == (8000, 0, 0, False)
    early = subprocess.run(
        [sys.executable, "-m", "dinet", "pay", "reclaim", channel, *where],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert early.returncode == 1 and "not expired" in early.stderr  # the node may still claim
    devnet.advance(601)
    assert din("pay", "reclaim", channel, *where)["reclaimed"] == 8000
    (row,) = din("pay", "status", *where)["channels"]
    assert row["closed"]


async def test_a_node_paid_in_an_erc20_token_is_paid_to_the_unit(tmp_path, devnet):
    token = deploy_test_token(devnet.rpc_url, devnet.accounts[0], 10**24)
    Channels(devnet.rpc_url, devnet.contract, devnet.accounts[0]).transfer(
        devnet.accounts[14].address, DEPOSIT, token
    )
    node = paid_node(tmp_path / "node", devnet, devnet.accounts[13], extra=["--channel-token", token])
    home = tmp_path / "client"
    try:
        # A channel in ETH does not pay a node paid in the token.
        eth_home = tmp_path / "eth-client"
        async with open_network(
            client_settings(eth_home, devnet, devnet.accounts[16], [node.addr])
        ) as network:
            await network.discover(None, None, timeout=10)
            terms = network.directory.get(node.peer_id).payment
            channel = Channels(devnet.rpc_url, devnet.contract, devnet.accounts[16]).open(
                terms.payee, DEPOSIT, 3600
            )
            record = ChannelRecord(
                channel, 1337, devnet.contract, network.peer_id, node.peer_id, terms.payee, 0.0
            )
            network.ledger.add_channel(record)
            with pytest.raises(NoCapablePeer, match="this node is paid in"):
                await ask_one(network, "Hi.")
        async with open_network(client_settings(home, devnet, devnet.accounts[14], [node.addr])) as network:
            await network.discover(None, None, timeout=10)
            for prompt in ("Hi.", "Name a colour."):
                assert (await ask_one(network, prompt)).receipts[0].voucher is not None
        din("pay", "close", "--home", str(node.home), *chain_args(devnet))
        viewer = Channels(devnet.rpc_url, devnet.contract)
        owed = receipts_wei(home, node.peer_id)
        assert owed > 0 and viewer.balance(devnet.accounts[13].address, token) == owed
        assert viewer.balance(devnet.accounts[14].address, token) == DEPOSIT - owed  # the rest refunded
    finally:
        node.stop()
