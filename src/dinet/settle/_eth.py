"""Keccak-256 and EIP-55 addresses: the two Ethereum primitives every settle module needs."""

from __future__ import annotations

from Crypto.Hash import keccak

from dinet.errors import BadVoucher

ZERO_ADDRESS = "0x" + "00" * 20


def keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def address_of_public_key(uncompressed: bytes) -> str:
    """The EIP-55 address of a 65-byte uncompressed secp256k1 public key (0x04 || X || Y)."""
    return checksummed(keccak256(uncompressed[1:])[-20:])


def checksummed(raw: bytes) -> str:
    """EIP-55: hex digits upper-cased where the keccak of the lower-case hex has a nibble >= 8."""
    hex_address = raw.hex()
    nibbles = keccak256(hex_address.encode("ascii")).hex()[:40]
    return "0x" + "".join(
        c.upper() if n in "89abcdef" else c for c, n in zip(hex_address, nibbles, strict=True)
    )


def address_bytes(address: str) -> bytes:
    """The 20 bytes of a 0x address (any case); BadVoucher if it is not one."""
    if not isinstance(address, str) or len(address) != 42 or address[:2] not in ("0x", "0X"):
        raise BadVoucher(f"not a 0x address of 20 bytes: {address!r}")
    try:
        return bytes.fromhex(address[2:])
    except ValueError:
        raise BadVoucher(f"not a hex address: {address!r}") from None


def to_address(address: str) -> str:
    """`address` in EIP-55 form (any case accepted)."""
    return checksummed(address_bytes(address))
