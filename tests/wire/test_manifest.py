import time

import pytest
from tests.helpers import make_manifest

from dinet.errors import ManifestError
from dinet.p2p.directory import PeerDirectory
from dinet.wire.keys import SigningKey
from dinet.wire.manifest import (
    MANIFEST_TTL_S,
    NetworkCoordinates,
    SignedManifest,
    sign_manifest,
    verify_manifest,
)
from dinet.wire.signing import sign_body


def test_a_signed_manifest_verifies():
    key = SigningKey.generate()
    manifest = make_manifest(key)
    assert verify_manifest(sign_manifest(manifest, key)) == manifest


def test_a_tampered_body_is_rejected():
    key = SigningKey.generate()
    signed = sign_manifest(make_manifest(key), key)
    forged = SignedManifest(
        body=signed.body.replace('"tokens_per_s":50.0', '"tokens_per_s":5000.0'), signature=signed.signature
    )
    assert forged.body != signed.body
    with pytest.raises(ManifestError, match="signature"):
        verify_manifest(forged)


def test_a_manifest_signed_by_another_key_is_rejected():
    victim, forger = SigningKey.generate(), SigningKey.generate()
    forged = sign_manifest(make_manifest(victim), forger)
    with pytest.raises(ManifestError, match="signature"):
        verify_manifest(forged)


def test_an_expired_manifest_is_rejected():
    key = SigningKey.generate()
    signed = sign_manifest(make_manifest(key, issued_at=time.time() - MANIFEST_TTL_S - 10), key)
    with pytest.raises(ManifestError, match="expired"):
        verify_manifest(signed)


def test_a_manifest_from_the_future_or_with_a_long_life_is_rejected():
    key = SigningKey.generate()
    future = sign_manifest(make_manifest(key, issued_at=time.time() + 3600), key)
    with pytest.raises(ManifestError, match="future"):
        verify_manifest(future)
    immortal = sign_manifest(make_manifest(key, ttl=10**9), key)
    with pytest.raises(ManifestError, match="lifetime"):
        verify_manifest(immortal)


@pytest.mark.parametrize("signature", ["", "not base64!", "AAAA"])
def test_garbage_signatures_are_rejected(signature):
    key = SigningKey.generate()
    signed = sign_manifest(make_manifest(key), key)
    with pytest.raises(ManifestError):
        verify_manifest(SignedManifest(body=signed.body, signature=signature))


def test_the_directory_keeps_the_newest_and_drops_expired():
    key = SigningKey.generate()
    directory = PeerDirectory()
    now = time.time()
    old = sign_manifest(make_manifest(key, issued_at=now - 5, region="old"), key)
    new = sign_manifest(make_manifest(key, issued_at=now, region="new"), key)
    assert directory.add(new)[1] is True
    assert directory.add(old)[1] is False
    assert [m.region for m in directory.manifests()] == ["new"]
    assert directory.manifests(now=now + MANIFEST_TTL_S + 1) == []


def test_a_manifest_whose_expiry_is_not_a_number_is_refused():
    # Signed by the right key: without the JSON number rule it would never expire.
    key = SigningKey.generate()
    body = make_manifest(key).model_dump_json()
    start, end = body.index('"expires_at":'), body.index(',"price_per_prompt_token"')
    body = body[:start] + '"expires_at":NaN' + body[end:]
    signed = SignedManifest(body=body, signature=sign_body(body, key))
    with pytest.raises(ManifestError, match="malformed"):
        verify_manifest(signed, now=time.time() + 1e9)


def test_reach_is_optional_and_one_of_three_states():
    """A manifest written before `reach` existed still verifies (its node's reach: unknown);
    a state other than the three is refused, signed or not."""
    key = SigningKey.generate()
    older = make_manifest(key).model_dump_json(exclude={"reach"})
    assert '"reach"' not in older
    assert verify_manifest(SignedManifest(body=older, signature=sign_body(older, key))).reach == "unknown"
    assert verify_manifest(sign_manifest(make_manifest(key, reach="private"), key)).reach == "private"
    odd = older[:-1] + ',"reach":"behind-a-relay"}'
    with pytest.raises(ManifestError, match="malformed"):
        verify_manifest(SignedManifest(body=odd, signature=sign_body(odd, key)))


def test_coordinates_are_optional_bounded_and_left_out_when_absent():
    key = SigningKey.generate()
    plain = sign_manifest(make_manifest(key), key)
    assert '"coords"' not in plain.body  # older readers read it as before
    assert verify_manifest(plain).coords is None
    placed = NetworkCoordinates(vector=(1.0, -2.0, 3.5, 0.0), height=4.0, error=0.3)
    signed = sign_manifest(make_manifest(key, coords=placed), key)
    assert verify_manifest(signed).coords == placed
    body = plain.body[:-1]
    for bad in (
        '{"vector":[1,2],"height":1.0,"error":0.5}',  # wrong size
        '{"vector":[1e9,0,0,0],"height":1.0,"error":0.5}',  # out of range
        '{"vector":[0,0,0,0],"height":-1.0,"error":0.5}',
        '{"vector":[NaN,0,0,0],"height":1.0,"error":0.5}',
    ):
        odd = body + f',"coords":{bad}}}'
        with pytest.raises(ManifestError, match="malformed"):
            verify_manifest(SignedManifest(body=odd, signature=sign_body(odd, key)))
