"""The allowlist file (format, reloads, mistakes) and the gate it drives, on in-process hosts.

The same rules against a real node process: test_private_swarm.py.
"""

from __future__ import annotations

import logging
import os

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from dinet.errors import ConfigError, PeerUnreachable
from dinet.p2p.allowlist import Allowlist, parse_allowlist
from dinet.p2p.gate import FORCE_PNET_ENV, PeerGate, peer_gate
from dinet.p2p.host import build_host, open_host, parse_multiaddrs
from dinet.p2p.pnet import SwarmKey
from dinet.wire.keys import SigningKey

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def test_comments_blank_lines_and_spaces_are_allowed(tmp_path):
    a, b = SigningKey.generate().peer_id, SigningKey.generate().peer_id
    path = tmp_path / "allow"
    path.write_text(f"# the lab\n\n  {a}   # gpu box\n{b}\n# {SigningKey.generate().peer_id}\n")
    assert parse_allowlist(path) == {a, b}


# The second is an RSA-style (Qm…) id: dinet peers are ed25519 only.
@pytest.mark.parametrize("bad", ["not-a-peer-id", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "12D3"])
def test_a_malformed_line_is_a_config_error_with_its_number(tmp_path, bad):
    path = tmp_path / "allow"
    path.write_text(f"# members\n{SigningKey.generate().peer_id}\n\n{bad}  # oops\n")
    with pytest.raises(ConfigError, match=rf"{path} line 4: '{bad}' is not a peer id"):
        Allowlist(path)
    with pytest.raises(ConfigError, match="cannot read the allowlist"):
        peer_gate(allow_peers=tmp_path / "missing")


def test_edits_are_followed_and_a_broken_edit_keeps_the_last_good_list(tmp_path, caplog):
    a, b = SigningKey.generate().peer_id, SigningKey.generate().peer_id
    path = tmp_path / "allow"
    path.write_text(f"{a}\n")
    allowlist = Allowlist(path)
    assert allowlist.allows(a) and not allowlist.allows(b)
    path.write_text(f"{a}\n{b}\n")
    assert allowlist.allows(b)
    path.write_text(f"{b}\n")
    assert not allowlist.allows(a) and allowlist.allows(b)
    with caplog.at_level(logging.ERROR):
        path.write_text(f"{b}\n{a[:20]}\n")  # half written, say
        assert allowlist.allows(b) and not allowlist.allows(a)
    assert "line 2" in caplog.text and "previous allowlist" in caplog.text
    os.unlink(path)
    assert allowlist.allows(b)  # gone for a moment (an editor's rename): the last list holds
    path.write_text("")
    assert not allowlist.allows(b)  # an empty list lets no one in


async def test_no_connection_to_an_unlisted_peer_is_made_whoever_dials(tmp_path):
    """The gate sits in the upgrader: a dial by py-libp2p itself (DHT, gossip, relay),
    which bypasses PeerHost.connect, is refused before the handshake all the same."""
    unlisted = SigningKey.generate()
    path = tmp_path / "allow"
    path.write_text(f"{SigningKey.generate().peer_id}\n")
    async with (
        open_host(SigningKey.generate(), LOOPBACK, gate=peer_gate(allow_peers=path)) as gated,
        open_host(unlisted, LOOPBACK) as other,
    ):
        with pytest.raises(PeerUnreachable, match="not dialing: .* is not on the allowlist"):
            await gated.dial(other.full_addrs()[0])
        at = parse_multiaddrs([other.full_addrs()[0].split("/p2p/")[0]])
        info = PeerInfo(ID.from_base58(other.peer_id), at)
        with trio.fail_after(30), pytest.raises(Exception, match="not dialing"):  # noqa: PT011
            await gated._raw.connect(info)  # the library's own dial (through PeerHost.connect)
        with trio.fail_after(30), pytest.raises(Exception, match="allowlist"):  # noqa: PT011
            await gated._raw.get_network().dial_addr(
                at[0], info.peer_id
            )  # the swarm's bare dial: the upgrader
        assert not gated.is_connected(other.peer_id) and not other.is_connected(gated.peer_id)


def test_libp2p_force_pnet_forbids_a_host_without_a_swarm_key(monkeypatch):
    monkeypatch.setenv(FORCE_PNET_ENV, "1")
    with pytest.raises(ConfigError, match="LIBP2P_FORCE_PNET=1"):
        build_host(SigningKey.generate())
    key = SwarmKey(os.urandom(32))
    assert build_host(SigningKey.generate(), gate=PeerGate(key))._gate == PeerGate(key)
