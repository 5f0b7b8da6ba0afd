"""The private-swarm layer (pnet) as libp2p's spec has it: the key file, XSalsa20, the wire.

The real-process tests (a node and its clients, with and without the key) are in
test_private_swarm.py.
"""

from __future__ import annotations

import os
import stat

import multiaddr
import pytest
import trio
from libp2p.abc import ConnectionType
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from nacl.bindings import crypto_secretbox

from dinet.errors import ConfigError
from dinet.p2p.gate import PeerGate
from dinet.p2p.host import open_host
from dinet.p2p.pnet import FIRST_BYTES, NONCE_SIZE, SwarmKey, _XSalsa20, read_swarm_key, write_new_swarm_key
from dinet.wire.keys import SigningKey

HEX_KEY = "2d1ef7a5c0b3b3e4f6a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6"


def test_xsalsa20_is_libsodiums():
    """Our XSalsa20 key stream equals libsodium's (PyNaCl's secretbox XORs a message with
    the stream from byte 32 on), and NaCl's own test vector (tests/stream3.c)."""
    for _ in range(50):
        key, nonce = os.urandom(32), os.urandom(24)
        ours = _XSalsa20(key, nonce).apply(bytes(32 + 500))
        assert ours[32:] == crypto_secretbox(bytes(500), nonce, key)[16:]
    key = bytes.fromhex("1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389")
    nonce = bytes.fromhex("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37")
    assert _XSalsa20(key, nonce).apply(bytes(32)).hex() == (
        "eea6a7251c1e72916d11c2cb214d3c252539121d8e234e652d651fa4c8cff880"
    )


def test_the_stream_continues_across_writes():
    key, nonce = os.urandom(32), os.urandom(24)
    whole = _XSalsa20(key, nonce).apply(bytes(1000))
    pieces = _XSalsa20(key, nonce)
    assert b"".join(pieces.apply(bytes(n)) for n in (1, 7, 64, 100, 828)) == whole


def test_a_new_key_file_is_libp2ps_format_private_and_never_overwritten(tmp_path):
    path = tmp_path / "swarm.key"
    made = write_new_swarm_key(path)
    lines = path.read_text().splitlines()
    assert lines[:2] == ["/key/swarm/psk/1.0.0/", "/base16/"]
    assert len(lines[2]) == 64 and bytes.fromhex(lines[2]) == made.secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_swarm_key(path).secret == made.secret
    with pytest.raises(ConfigError, match="already exists"):
        write_new_swarm_key(path)
    assert bytes.fromhex(path.read_text().splitlines()[2]) == made.secret  # untouched
    assert write_new_swarm_key(tmp_path / "other.key").secret != made.secret


def test_keys_written_by_other_tools_are_read(tmp_path):
    import base64

    secret = bytes.fromhex(HEX_KEY)
    forms = {
        "crlf": f"/key/swarm/psk/1.0.0/\r\n/base16/\r\n{HEX_KEY.upper()}\r\n".encode(),
        "base64": b"/key/swarm/psk/1.0.0/\n/base64/\n" + base64.b64encode(secret) + b"\n",
        "bin": b"/key/swarm/psk/1.0.0/\n/bin/\n" + secret,
    }
    for name, data in forms.items():
        (tmp_path / name).write_bytes(data)
        (tmp_path / name).chmod(0o600)
        assert read_swarm_key(tmp_path / name).secret == secret, name


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (f"/base16/\n{HEX_KEY}\n", "first line must be /key/swarm/psk/1.0.0/"),
        (f"/key/swarm/psk/1.0.0/\n/base32/\n{HEX_KEY}\n", "unknown encoding '/base32/'"),
        (f"/key/swarm/psk/1.0.0/\n/base16/\n{HEX_KEY[:-2]}\n", "64 hex digits, not 62"),
        (f"/key/swarm/psk/1.0.0/\n/base16/\n{'zz' * 32}\n", "not hex"),
        ("/key/swarm/psk/1.0.0/\n/base64/\n!!!\n", "not valid base64"),
        ("", "first line"),
    ],
)
def test_a_malformed_key_file_is_a_config_error_naming_file_and_fault(tmp_path, content, reason):
    path = tmp_path / "swarm.key"
    path.write_text(content)
    with pytest.raises(ConfigError, match=reason) as caught:
        read_swarm_key(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read"):
        read_swarm_key(tmp_path / "missing.key")


async def test_the_wire_is_libp2ps_pnet_a_24_byte_nonce_then_xsalsa20():
    """What another libp2p implementation reads from a private host: a 24-byte nonce, then
    multistream-select's header XOR XSalsa20(key, nonce) (libp2p's PSK v1 spec).

    Fails with py-libp2p's own pnet (checked by building the host with new_host(psk=...)):
    it sends an 8-byte nonce and uses Salsa20, which no other implementation can read.
    """
    key = SwarmKey(os.urandom(32))
    async with open_host(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], gate=PeerGate(key)) as host:
        port = int(host.full_addrs()[0].split("/tcp/")[1].split("/")[0])
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            got = b""
            while len(got) < NONCE_SIZE + len(FIRST_BYTES):
                got += await stream.receive_some()
            await stream.aclose()
    nonce, sealed = got[:NONCE_SIZE], got[NONCE_SIZE : NONCE_SIZE + len(FIRST_BYTES)]
    assert sealed != FIRST_BYTES
    assert _XSalsa20(key.secret, nonce).apply(sealed) == FIRST_BYTES


def _raw_pair() -> tuple[RawConnection, RawConnection]:
    """Two ends of a connection as the relay transport hands them to a host."""
    a, b = trio.socket.socketpair()
    return tuple(  # type: ignore[return-value]
        RawConnection(TrioTCPStream(trio.SocketStream(s)), initiator, ConnectionType.RELAYED)
        for s, initiator in ((a, True), (b, False))
    )


@pytest.mark.parametrize("same_key", [True, False])
async def test_relayed_connections_are_behind_the_swarm_key_too(same_key):
    """A relay circuit reaches a host through `upgrade_outbound_connection` /
    `upgrade_inbound_connection`, not through a transport: the key guards it all the same.
    (py-libp2p's own pnet left the dialing end of a circuit unprotected.)"""
    key = SwarmKey(os.urandom(32))
    other = key if same_key else SwarmKey(os.urandom(32))
    async with (
        open_host(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], gate=PeerGate(key)) as dialer,
        open_host(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], gate=PeerGate(other)) as listener,
    ):
        out, into = _raw_pair()
        circuit = multiaddr.Multiaddr(f"/p2p/{dialer.peer_id}/p2p-circuit/p2p/{listener.peer_id}")
        outcome: dict[str, object] = {}

        async def upgrade(side: str, job) -> None:  # type: ignore[no-untyped-def]
            try:
                outcome[side] = await job()
            except Exception as exc:  # what each end sees is the point of the test
                outcome[side] = exc

        target = ID.from_base58(listener.peer_id)
        dial = dialer._raw.upgrade_outbound_connection  # the library's hosts, as its relay uses them
        accept = listener._raw.upgrade_inbound_connection
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upgrade, "out", lambda: dial(out, target))
                nursery.start_soon(upgrade, "in", lambda: accept(into, circuit))
        if same_key:
            assert not isinstance(outcome["out"], Exception) and not isinstance(outcome["in"], Exception)
            assert dialer.is_connected(listener.peer_id)
        else:
            assert "not in this private swarm" in str(outcome["out"]) + str(outcome["in"])
            assert not dialer.is_connected(listener.peer_id) and not listener.is_connected(dialer.peer_id)
