"""Signed documents: ed25519 by a peer's own key over the exact bytes of a JSON body.

The verifier needs no key exchange: the public key is inside the signer's peer id.
Signing the bytes as sent (not a re-serialisation) lets any implementation verify.
"""

from __future__ import annotations

import base64

from libp2p.crypto.keys import PrivateKey
from libp2p.peer.id import ID


def sign_body(body: str, key: PrivateKey, domain: bytes = b"") -> str:
    """The base64 signature of `domain` + `body`'s UTF-8 bytes.

    A domain prefix keeps a signature made for one purpose from passing for another.
    """
    return base64.b64encode(key.sign(domain + body.encode())).decode()


def signed_by(peer_id: str, body: str, signature: str, domain: bytes = b"") -> bool:
    """Whether `signature` is `peer_id`'s over `domain` + `body`; False for any malformed part."""
    try:
        public_key = ID.from_base58(peer_id).extract_public_key()
        raw = base64.b64decode(signature, validate=True)
        return public_key is not None and bool(public_key.verify(domain + body.encode(), raw))
    except Exception:  # base58, multihash, base64 and nacl raise assorted types
        return False
