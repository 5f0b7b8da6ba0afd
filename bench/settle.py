"""What payment channels cost: vouchers per request off-chain, gas per transaction on-chain.

1. Signing and checking one voucher (EIP-712 digest, secp256k1 sign, recover), as a client
   and a node do per request: dinet.settle.voucher (coincurve + pycryptodome keccak) beside
   eth_account's sign_typed_data + recover_message, the usual Python way. Medians of N.
2. Gas of each contract call on a local ganache devnet (shanghai rules), for an ETH and an
   ERC-20 channel: open (ERC-20: approve + open), top-up, claim, close, reclaim.
3. Requests served per on-chain transaction: a channel of R requests, each paid by a
   voucher checked off-chain, settled by open + close (2 transactions), and what that
   costs in gas per request.
4. The whole payment work of one request, as the node and the client do it (no network):
   the node admits it on its channel (ledger reads, the channel's state cached), the client
   signs the voucher and keeps it with the receipt, the node checks it and keeps both; beside
   the same receipt kept unpaid on both sides (what a request costs without a channel).
   Alternated, medians.

    .venv/bin/python bench/settle.py [--vouchers 2000] [--requests 1000] [--answers 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import trio
from eth_account import Account
from eth_account.messages import encode_typed_data

from dinet.client.payments import ChannelBook
from dinet.ledger import Ledger
from dinet.node.payments import PaymentDesk, PaymentPolicy
from dinet.settle import ChainKey, ChannelDomain, sign_voucher, voucher_signer
from dinet.settle.chain import Channels, deploy_test_token
from dinet.settle.devnet import Devnet
from dinet.settle.voucher import typed_data
from dinet.wire.keys import SigningKey
from dinet.wire.messages import ChatMessage, CountersignedReceipt, GenerationParams, InferRequest
from dinet.wire.receipt import ReceiptBody, charge, countersign, output_hash, sign_receipt

DOMAIN = ChannelDomain(chain_id=1337, contract="0x" + "ab" * 20)
CHANNEL = "0x" + "cd" * 32
ETH = 10**18


def median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 1)


def voucher_costs(n: int) -> dict[str, float]:
    key = ChainKey.generate()
    sign, check, ref_sign, ref_check = [], [], [], []
    for amount in range(1, n + 1):
        t0 = time.perf_counter()
        voucher = sign_voucher(DOMAIN, CHANNEL, amount, key)
        t1 = time.perf_counter()
        assert voucher_signer(DOMAIN, voucher) == key.address
        t2 = time.perf_counter()
        sign.append(t1 - t0)
        check.append(t2 - t1)
    for amount in range(1, max(n // 10, 20) + 1):  # the baseline is slow: a tenth as many
        data = typed_data(DOMAIN, CHANNEL, amount)
        t0 = time.perf_counter()
        signed = Account.sign_typed_data(key.private_key, full_message=data)
        t1 = time.perf_counter()
        assert (
            Account.recover_message(encode_typed_data(full_message=data), signature=signed.signature)
            == key.address
        )
        t2 = time.perf_counter()
        ref_sign.append(t1 - t0)
        ref_check.append(t2 - t1)
    return {
        "sign_us": median_us(sign),
        "check_us": median_us(check),
        "eth_account_sign_us": median_us(ref_sign),
        "eth_account_check_us": median_us(ref_check),
    }


def gas_costs(devnet: Devnet, token: str | None) -> dict[str, int]:
    """Gas of each call on a fresh channel (ERC-20 open and top-up include their approve)."""
    client = Channels(devnet.rpc_url, devnet.contract, devnet.accounts[1])
    node = Channels(devnet.rpc_url, devnet.contract, devnet.accounts[2])
    payee = devnet.accounts[2].address

    def total(channels: Channels) -> int:
        return sum(int(r["gasUsed"]) for r in channels.last_receipts)

    gas = {}
    channel = client.open(payee, ETH, 3600, token=token)
    gas["open"] = total(client)
    client.top_up(channel, ETH)
    gas["top_up"] = total(client)
    node.claim(sign_voucher(client.domain, channel, ETH // 2, devnet.accounts[1]))
    gas["claim_first"] = total(node)
    node.claim(sign_voucher(client.domain, channel, ETH, devnet.accounts[1]))
    gas["claim_again"] = total(node)
    node.close(sign_voucher(client.domain, channel, 3 * ETH // 2, devnet.accounts[1]))
    gas["close"] = total(node)
    expiring = client.open(payee, ETH, 60, token=token)
    devnet.advance(61)
    client.reclaim(expiring)
    gas["reclaim"] = total(client)
    return gas


def per_request(devnet: Devnet, requests: int) -> dict[str, float]:
    """A channel of `requests` requests (one voucher each, checked by the node) settled by
    open + close."""
    sender, payee = devnet.accounts[1], devnet.accounts[3]
    client = Channels(devnet.rpc_url, devnet.contract, sender)
    node = Channels(devnet.rpc_url, devnet.contract, payee)
    price = 30_000_000_000_000  # wei per request (3e-5 ETH)
    channel = client.open(payee.address, price * requests, 3600)
    gas = client.last_gas
    t0 = time.perf_counter()
    latest = None
    for i in range(1, requests + 1):
        latest = sign_voucher(client.domain, channel, price * i, sender)  # client, per request
        assert voucher_signer(node.domain, latest) == sender.address  # node, per request
    off_chain_s = time.perf_counter() - t0
    assert latest is not None
    paid = node.close(latest)
    gas += node.last_gas
    assert paid == price * requests
    return {
        "requests": requests,
        "transactions": 2,
        "requests_per_tx": requests / 2,
        "gas_total": gas,
        "gas_per_request": round(gas / requests, 1),
        "off_chain_us_per_request": round(off_chain_s / requests * 1e6, 1),
    }


def answer_receipts(n: int, node: SigningKey, client: SigningKey) -> list[CountersignedReceipt]:
    out = []
    for i in range(n):
        body = ReceiptBody(
            request_id=f"req-{i}", request_hash="ab" * 32, model_hash="cd" * 32, node=node.peer_id,
            client=client.peer_id, prompt_tokens=30, completion_tokens=64, first_index=0,
            price_per_prompt_token=1e-6, price_per_token=2e-5, amount=charge(30, 64, 1e-6, 2e-5),
            output_hash=output_hash(range(64)), issued_at=time.time(),
        )  # fmt: skip
        out.append(countersign(sign_receipt(body, node), client))
    return out


def node_and_client(devnet: Devnet, answers: int) -> dict[str, float]:
    """Per request: the node's admission and voucher check and both ledgers' writes, paid by
    a channel vs. unpaid (ms, medians of alternated requests)."""
    sender, payee = devnet.accounts[1], devnet.accounts[2]
    node_key, client_key = SigningKey.generate(), SigningKey.generate()
    request = InferRequest(
        request_id="r",
        params=GenerationParams(messages=(ChatMessage(role="user", content="Hi " * 40),), max_tokens=64),
    )
    rate = 10**12  # wei per credit
    paid_ms: list[float] = []
    unpaid_ms: list[float] = []

    async def run(tmp: Path) -> None:
        client_channels = Channels(devnet.rpc_url, devnet.contract, sender)
        channel = client_channels.open(payee.address, 10**18, 3600)
        node_ledger = Ledger(tmp / "node.sqlite")
        desk = PaymentDesk(
            Channels(devnet.rpc_url, devnet.contract, payee), node_ledger, node_key.peer_id,
            PaymentPolicy(wei_per_credit=rate), lambda: (1e-6, 2e-5),
        )  # fmt: skip
        client_ledger = Ledger(tmp / "client.sqlite")
        book = ChannelBook(client_channels, client_ledger, client_key.peer_id)
        terms = desk.terms()
        plain_node, plain_client = Ledger(tmp / "node-plain.sqlite"), Ledger(tmp / "client-plain.sqlite")
        await desk.admit(
            client_key.peer_id, request.model_copy(update={"channel": channel})
        )  # warms the cache
        receipts = answer_receipts(2 * answers, node_key, client_key)
        for i, receipt in enumerate(receipts):
            body = ReceiptBody.model_validate_json(receipt.body)
            t0 = time.perf_counter()
            if i % 2 == 0:
                reservation = await desk.admit(
                    client_key.peer_id, request.model_copy(update={"channel": channel})
                )
                assert not isinstance(reservation, str) and reservation is not None, reservation
                paid = await book.payment(channel, body, terms)
                client_ledger.record(receipt.model_copy(update={"voucher": paid.voucher}), paid)
                desk.answered(reservation)
                payment = await desk.payment_for(body, channel, paid.voucher)
                assert payment.voucher is not None
                node_ledger.record(receipt, payment)
                desk.release(reservation)
                paid_ms.append((time.perf_counter() - t0) * 1000)
            else:
                plain_client.record(receipt)
                plain_node.record(receipt)
                unpaid_ms.append((time.perf_counter() - t0) * 1000)

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run, Path(tmp))
    paid, unpaid = statistics.median(paid_ms), statistics.median(unpaid_ms)
    return {
        "answers": answers,
        "paid_ms": round(paid, 3),
        "unpaid_ms": round(unpaid, 3),
        "extra_ms": round(paid - unpaid, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vouchers", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--answers", type=int, default=300)
    args = parser.parse_args()

    vouchers = voucher_costs(args.vouchers)
    print(f"Voucher per request, median of {args.vouchers} (eth_account: of {max(args.vouchers // 10, 20)})")
    print(f"{'':24}{'dinet.settle':>14}{'eth_account':>14}")
    print(f"{'sign':24}{vouchers['sign_us']:>11} us{vouchers['eth_account_sign_us']:>11} us")
    print(
        f"{'check (recover signer)':24}{vouchers['check_us']:>11} us{vouchers['eth_account_check_us']:>11} us"
    )

    with Devnet(accounts=4) as devnet:
        token = deploy_test_token(devnet.rpc_url, devnet.accounts[0], 10**30)
        Channels(devnet.rpc_url, devnet.contract, devnet.accounts[0]).transfer(
            devnet.accounts[1].address, 10**29, token=token
        )
        eth_gas = gas_costs(devnet, None)
        token_gas = gas_costs(devnet, token)
        settled = per_request(devnet, args.requests)
        work = node_and_client(devnet, args.answers)

    print("\nGas per call (ganache 7.9.2, shanghai; ERC-20 open/top-up include the approve)")
    print(f"{'call':14}{'ETH':>10}{'ERC-20':>10}")
    for call in eth_gas:
        print(f"{call:14}{eth_gas[call]:>10}{token_gas[call]:>10}")
    print(
        f"\nA channel of {settled['requests']} requests, open + close: "
        f"{settled['requests_per_tx']:.0f} requests per transaction, "
        f"{settled['gas_per_request']} gas per request, "
        f"{settled['off_chain_us_per_request']} us off-chain per request (sign + check)"
    )
    print(
        f"\nOne request's payment work, node and client, median of {work['answers']} each, alternated:\n"
        f"{'paid by a channel':24}{work['paid_ms']:>9} ms\n"
        f"{'unpaid (receipts only)':24}{work['unpaid_ms']:>9} ms\n"
        f"{'extra for the channel':24}{work['extra_ms']:>9} ms   (target: under 2 ms)"
    )
    print(
        json.dumps(
            {
                "vouchers": vouchers,
                "gas_eth": eth_gas,
                "gas_erc20": token_gas,
                "channel": settled,
                "per_request": work,
            }
        )
    )


if __name__ == "__main__":
    main()
