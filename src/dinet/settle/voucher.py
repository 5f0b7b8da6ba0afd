"""Vouchers: a client's EIP-712 signature over the cumulative amount it owes on a channel.

The typed data, which `contracts/channels.vy` checks on-chain:

    EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)
        name "dinet channels", version "1", the chain's id, the channels contract
    Voucher(bytes32 channel,uint256 amount)

    digest = keccak256(0x19 0x01 || domainSeparator || keccak256(VOUCHER_TYPEHASH || channel || amount))

Signing and checking one voucher is on every request's path, so this module hashes with
pycryptodome's keccak and signs/recovers with libsecp256k1 (coincurve) directly: tens of
microseconds, where eth_account's `sign_typed_data` takes milliseconds (bench/settle.py).
tests/settle/test_voucher.py proves the digest equal to eth_account's `encode_typed_data`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

from coincurve import PublicKey

from dinet.errors import BadVoucher
from dinet.settle._eth import address_bytes, address_of_public_key, keccak256, to_address
from dinet.settle.keys import ChainKey

DOMAIN_NAME = "dinet channels"
DOMAIN_VERSION = "1"
_DOMAIN_TYPEHASH = keccak256(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
_VOUCHER_TYPEHASH = keccak256(b"Voucher(bytes32 channel,uint256 amount)")
_NAME_HASH = keccak256(DOMAIN_NAME.encode())
_VERSION_HASH = keccak256(DOMAIN_VERSION.encode())
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = _N // 2
_UINT256 = 1 << 256
_CHANNEL = re.compile(r"0x[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")


@dataclass(frozen=True)
class ChannelDomain:
    """Where vouchers are valid: one chain and one channels contract."""

    chain_id: int
    contract: str  # 0x address

    @cached_property
    def separator(self) -> bytes:
        """EIP-712's domainSeparator (hashStruct of the domain)."""
        if not 0 <= self.chain_id < _UINT256:
            raise BadVoucher(f"chain id out of range: {self.chain_id}")
        return keccak256(
            _DOMAIN_TYPEHASH
            + _NAME_HASH
            + _VERSION_HASH
            + self.chain_id.to_bytes(32, "big")
            + bytes(12)
            + address_bytes(self.contract)
        )


@dataclass(frozen=True)
class Voucher:
    """The sender's promise that `amount` in total is owed on `channel`."""

    channel: str  # 0x + 64 hex: the id the contract gave the channel
    amount: int  # cumulative, in the channel asset's smallest unit (wei for ETH)
    signature: str  # 0x + 130 hex: r, s, v with v in {27, 28}


def voucher_digest(domain: ChannelDomain, channel: str, amount: int) -> bytes:
    """The 32 bytes the sender signs (EIP-712 `\\x19\\x01 || domain || hashStruct(Voucher)`)."""
    if not isinstance(channel, str) or not _CHANNEL.fullmatch(channel):
        raise BadVoucher(f"a channel id is 0x and 64 hex digits, not {channel!r}")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount < _UINT256:
        raise BadVoucher(f"a voucher amount is an integer in [0, 2**256), not {amount!r}")
    voucher = keccak256(_VOUCHER_TYPEHASH + bytes.fromhex(channel[2:]) + amount.to_bytes(32, "big"))
    return keccak256(b"\x19\x01" + domain.separator + voucher)


def sign_voucher(domain: ChannelDomain, channel: str, amount: int, key: ChainKey) -> Voucher:
    signature = key.sign_digest(voucher_digest(domain, channel, amount))  # r || s || recovery id
    rs, recovery = signature[:64], signature[64]
    return Voucher(channel=channel, amount=amount, signature="0x" + rs.hex() + f"{recovery + 27:02x}")


def voucher_signer(domain: ChannelDomain, voucher: Voucher) -> str:
    """The EIP-55 address that signed `voucher` in `domain`. BadVoucher if a field is
    malformed or the signature is not one the contract accepts (high s, v not 27/28, r or
    s out of range) or recovers no key. Whether the signer is the channel's sender is the
    caller's check."""
    digest = voucher_digest(domain, voucher.channel, voucher.amount)
    if not isinstance(voucher.signature, str) or not _SIGNATURE.fullmatch(voucher.signature):
        raise BadVoucher("a voucher signature is 0x and 130 hex digits (r, s, v)")
    raw = bytes.fromhex(voucher.signature[2:])
    r, s, v = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]
    if not 0 < r < _N or not 0 < s <= _HALF_N:
        raise BadVoucher("voucher signature out of range (r or s zero or too large, or high s)")
    if v not in (27, 28):
        raise BadVoucher(f"voucher signature v is {v}, not 27 or 28")
    try:
        public = PublicKey.from_signature_and_message(raw[:64] + bytes([v - 27]), digest, hasher=None)
    except ValueError:  # libsecp256k1 found no point for this r
        raise BadVoucher("voucher signature recovers no public key") from None
    return address_of_public_key(public.format(compressed=False))


def wei_of(credits: float, wei_per_credit: int) -> int:
    """Credits (the ledger's unit) in wei, exactly and the same on every machine.

    The float is taken at its exact binary value (`Fraction(credits)`, no decimal
    rounding on the way), multiplied by the integer rate and rounded to the nearest wei,
    ties to even (Python's `round` of a Fraction). A client and a node that agree on the
    credits, as two floats with the same bits, therefore agree on the wei. Negative
    credits are refused: a voucher only ever grows."""
    if credits < 0 or credits != credits or credits in (float("inf"), float("-inf")):
        raise ValueError(f"credits must be a finite non-negative number, not {credits!r}")
    if wei_per_credit < 0:
        raise ValueError("wei_per_credit must not be negative")
    return round(Fraction(credits) * wei_per_credit)


def typed_data(domain: ChannelDomain, channel: str, amount: int) -> dict[str, object]:
    """The voucher as EIP-712 typed data (the JSON `eth_signTypedData_v4` and eth_account
    take): what a wallet shows and signs, to the same digest as `voucher_digest`."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Voucher": [{"name": "channel", "type": "bytes32"}, {"name": "amount", "type": "uint256"}],
        },
        "primaryType": "Voucher",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": domain.chain_id,
            "verifyingContract": domain.contract,
        },
        "message": {"channel": channel, "amount": amount},
    }


def same_address(a: str, b: str) -> bool:
    """Whether two 0x addresses are the same account, whatever their case."""
    return to_address(a) == to_address(b)
