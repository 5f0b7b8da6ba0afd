"""Signed documents: ed25519 by a peer's own key over the exact bytes of a JSON body.

The verifier needs no key exchange: the public key is inside the signer's peer id.
Signing the bytes as sent (not a re-serialisation) lets any implementation verify.
"""

from __future__ import annotations

import base64
import binascii
import time

from dinet.wire.keys import Signer, verify


def sign_body(body: str, key: Signer, domain: bytes = b"") -> str:
    """The base64 signature of `domain` + `body`'s UTF-8 bytes.

    A domain prefix keeps a signature made for one purpose from passing for another.
    """
    return base64.b64encode(key.sign(domain + body.encode())).decode()


def signed_by(peer_id: str, body: str, signature: str, domain: bytes = b"") -> bool:
    """Whether `signature` is `peer_id`'s over `domain` + `body`; False for any malformed part."""
    try:
        raw = base64.b64decode(signature, validate=True)
        data = domain + body.encode()
    except (binascii.Error, ValueError):  # not base64; a lone surrogate that has no UTF-8
        return False
    return verify(peer_id, data, raw)


MAX_CLOCK_SKEW_S = 60.0  # how far in the future a signed record may say it was issued


def lifetime_problem(
    issued_at: float, expires_at: float, max_lifetime_s: float, now: float | None
) -> str | None:
    """Why a signed record cannot be taken now ("expired", "is issued in the future",
    "claims too long a lifetime"), or None when its lifetime is fine."""
    now = time.time() if now is None else now
    if expires_at <= now:
        return "expired"
    if issued_at > now + MAX_CLOCK_SKEW_S:
        return "is issued in the future"
    if expires_at - issued_at > max_lifetime_s:
        return "claims too long a lifetime"
    return None
