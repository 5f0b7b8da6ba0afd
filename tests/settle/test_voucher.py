"""Vouchers off-chain: the digest is standard EIP-712 (eth_account computes the same),
malformed vouchers are a typed error, and credits convert to wei exactly."""

from __future__ import annotations

from fractions import Fraction

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from dinet.errors import BadVoucher
from dinet.settle import (
    ChainKey,
    ChannelDomain,
    Voucher,
    sign_voucher,
    voucher_digest,
    voucher_signer,
    wei_of,
)
from dinet.settle.voucher import typed_data

KEY = ChainKey.from_hex("0x" + "42" * 32)
DOMAIN = ChannelDomain(chain_id=1337, contract="0x" + "ab" * 20)
CHANNEL = "0x" + "cd" * 32
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

channels = st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex())
amounts = st.integers(min_value=0, max_value=2**256 - 1)
addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())


@settings(max_examples=25, deadline=None)
@given(
    chain_id=st.integers(min_value=1, max_value=2**64), contract=addresses, channel=channels, amount=amounts
)
def test_the_digest_is_eth_accounts_eip712_digest(chain_id, contract, channel, amount):
    domain = ChannelDomain(chain_id, contract)
    signable = encode_typed_data(full_message=typed_data(domain, channel, amount))
    voucher = sign_voucher(domain, channel, amount, KEY)
    assert Account.recover_message(signable, signature=voucher.signature) == KEY.address
    assert voucher_signer(domain, voucher) == KEY.address
    # Byte for byte the signature eth_account makes (RFC 6979 nonces on both sides).
    assert "0x" + Account.sign_message(signable, KEY.private_key).signature.hex() == voucher.signature
    assert len(voucher_digest(domain, channel, amount)) == 32


def test_a_key_has_the_address_eth_account_gives_it():
    key = ChainKey.generate()
    assert key.address == Account.from_key(key.private_key).address
    assert ChainKey.from_hex(key.hex) == key
    assert key.hex not in repr(key)


def test_a_voucher_from_another_domain_recovers_another_signer():
    voucher = sign_voucher(DOMAIN, CHANNEL, 10, KEY)
    assert voucher_signer(ChannelDomain(1, DOMAIN.contract), voucher) != KEY.address
    assert voucher_signer(ChannelDomain(1337, "0x" + "ac" * 20), voucher) != KEY.address


def high_s_twin(voucher: Voucher) -> Voucher:
    raw = bytes.fromhex(voucher.signature[2:])
    s = (N - int.from_bytes(raw[32:64], "big")).to_bytes(32, "big")
    return Voucher(voucher.channel, voucher.amount, "0x" + (raw[:32] + s + bytes([raw[64] ^ 1])).hex())


def test_malformed_vouchers_are_refused():
    good = sign_voucher(DOMAIN, CHANNEL, 10, KEY)
    sig = good.signature
    bad = [
        Voucher(CHANNEL, 10, sig[:-2]),  # short
        Voucher(CHANNEL, 10, sig + "00"),  # long
        Voucher(CHANNEL, 10, sig[:-2] + "zz"),  # not hex
        Voucher(CHANNEL, 10, sig[:-2] + "00"),  # v 0
        Voucher(CHANNEL, 10, sig[:-2] + "1d"),  # v 29
        Voucher(CHANNEL, 10, "0x" + "00" * 64 + "1b"),  # r = s = 0
        Voucher(CHANNEL, 10, "0x" + "ff" * 64 + "1b"),  # r, s >= n
        high_s_twin(good),
        Voucher(CHANNEL[:-2], 10, sig),
        Voucher("cd" * 33, 10, sig),
        Voucher(CHANNEL, -1, sig),
        Voucher(CHANNEL, 2**256, sig),
        Voucher(CHANNEL, True, sig),
        Voucher(CHANNEL, 10.0, sig),  # type: ignore[arg-type]
    ]
    for voucher in bad:
        with pytest.raises(BadVoucher):
            voucher_signer(DOMAIN, voucher)
    assert voucher_signer(DOMAIN, good) == KEY.address


@settings(max_examples=200, deadline=None)
@given(
    channel=st.one_of(channels, st.text(max_size=70)), amount=st.integers(), signature=st.text(max_size=140)
)
def test_any_voucher_is_a_signer_or_bad_voucher(channel, amount, signature):
    try:
        signer = voucher_signer(DOMAIN, Voucher(channel, amount, signature))
    except BadVoucher:
        return
    assert signer.startswith("0x") and len(signer) == 42


@settings(max_examples=200, deadline=None)
@given(signature=st.binary(min_size=65, max_size=65))
def test_random_signature_bytes_never_escape_as_another_error(signature):
    try:
        voucher_signer(DOMAIN, Voucher(CHANNEL, 1, "0x" + signature.hex()))
    except BadVoucher:
        pass


def test_wei_of_is_exact_and_rounds_half_to_even():
    assert wei_of(1.0, 10**18) == 10**18
    # 0.1 is 0.1000000000000000055511151231257827... as a float: that value, rounded.
    assert wei_of(0.1, 10**18) == 100000000000000006
    assert wei_of(0.5, 1) == 0 and wei_of(1.5, 1) == 2 and wei_of(2.5, 1) == 2
    assert wei_of(0.0, 10**18) == 0
    assert wei_of(3e-5, 10**12) == 30000000  # a request's price at a microether per credit
    with pytest.raises(ValueError):
        wei_of(-1e-9, 10**18)
    with pytest.raises(ValueError):
        wei_of(float("nan"), 10**18)


@given(credits=st.floats(min_value=0, max_value=1e9, allow_nan=False), rate=st.integers(0, 10**24))
def test_wei_of_matches_exact_rational_arithmetic(credits, rate):
    exact = Fraction(credits) * rate
    wei = wei_of(credits, rate)
    assert abs(wei - exact) <= Fraction(1, 2)
    assert wei_of(credits, rate) == wei  # deterministic
