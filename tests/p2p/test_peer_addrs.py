"""Bootstrap addresses with DNS names: /dns4 resolved by the system, /dnsaddr by TXT records.

The TXT records come from a real DNS server on loopback (`dns_server`, a few lines of
dnspython's message API over a trio UDP socket), so lookups go over the wire as they
would to any resolver. The peers are real hosts in this process that answer manifest
queries (`manifest_peer`, a fake node: these tests are about addresses).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
import trio
from tests.helpers import raw_host
from tests.p2p.test_joining import manifest_peer

from dinet.errors import ConfigError, PeerUnreachable
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.joining import Joiner
from dinet.p2p.peer_addrs import check_peer_addr, resolve_addr, txt_from
from dinet.wire.keys import SigningKey


@asynccontextmanager
async def dns_server(records: Mapping[str, list[str]]) -> AsyncIterator[int]:
    """A DNS server on 127.0.0.1 answering TXT queries from `records` (domain -> texts),
    NXDOMAIN for any other name; yields its UDP port."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))

    async def serve() -> None:
        while True:
            data, client = await sock.recvfrom(4096)
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            question = query.question[0]
            texts = records.get(question.name.to_text(omit_final_dot=True))
            if texts is None:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.TXT:
                quoted = [f'"{text}"' for text in texts]
                reply.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", "TXT", quoted))
            await sock.sendto(reply.to_wire(), client)

    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            yield sock.getsockname()[1]
            nursery.cancel_scope.cancel()


def port_of(addr: str) -> str:
    return addr.split("/tcp/")[1].split("/")[0]


async def test_a_dns4_bootstrap_address_joins_a_loopback_peer():
    """`localhost` comes from /etc/hosts, which only the system's resolver reads: py-libp2p's
    own dial-time resolution (dnspython alone) finds nothing for it and dials the name."""
    async with manifest_peer() as (peer, _), raw_host() as me:
        addr = f"/dns4/localhost/tcp/{port_of(peer.full_addrs()[0])}/p2p/{peer.peer_id}"
        assert await resolve_addr(addr) == [f"/ip4/127.0.0.1/tcp/{port_of(addr)}/p2p/{peer.peer_id}"]
        joiner = Joiner(me, PeerDirectory())
        assert await joiner.join([addr]) == [peer.peer_id]
        assert [m.peer_id for m in joiner.directory.manifests()] == [peer.peer_id]


async def test_a_dnsaddr_expands_to_the_peers_in_its_txt_records():
    async with manifest_peer() as (a, _), manifest_peer() as (b, _), raw_host() as me:
        a_addr, b_addr = a.full_addrs()[0], b.full_addrs()[0]
        other = SigningKey.generate().peer_id
        records = {
            "_dnsaddr.boot.test": [
                f"dnsaddr={a_addr}",
                f"dnsaddr=/dnsaddr/more.boot.test/p2p/{b.peer_id}",  # nested, for one peer
                f"dnsaddr=/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{other}",  # no transport of ours
                "v=spf1 -all",  # not a dnsaddr record at all
            ],
            "_dnsaddr.more.boot.test": [
                f"dnsaddr={b_addr}",
                f"dnsaddr=/ip4/127.0.0.1/tcp/9/p2p/{other}",  # another peer: not the one asked for
            ],
        }
        async with dns_server(records) as port:
            txt = txt_from("127.0.0.1", port)
            found = await resolve_addr("/dnsaddr/boot.test", txt=txt)
            assert sorted(found) == sorted([a_addr, b_addr])  # a DNS answer is a set: any order
            assert await resolve_addr(f"/dnsaddr/boot.test/p2p/{a.peer_id}", txt=txt) == [a_addr]
            joiner = Joiner(me, PeerDirectory(), txt=txt)
            assert sorted(await joiner.join(["/dnsaddr/boot.test"])) == sorted([a.peer_id, b.peer_id])


async def test_a_name_that_does_not_resolve_is_logged_and_the_others_are_used(caplog):
    async with manifest_peer() as (peer, _), raw_host() as me, dns_server({}) as port:
        missing = f"/dns4/no-such-host.invalid/tcp/4001/p2p/{peer.peer_id}"
        joiner = Joiner(me, PeerDirectory(), txt=txt_from("127.0.0.1", port))
        with caplog.at_level(logging.WARNING, logger="dinet.p2p.joining"):
            reached = await joiner.join(["/dnsaddr/nowhere.test", missing, peer.full_addrs()[0]])
        assert reached == [peer.peer_id]
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("/dnsaddr/nowhere.test" in line and "no TCP address" in line for line in warned), warned
        unknown_host = "cannot resolve 'no-such-host.invalid'"
        assert any(missing in line and unknown_host in line for line in warned), warned


async def test_an_unanswered_txt_lookup_is_an_error_not_a_hang():
    """A DNS server that never answers (a bound socket nobody reads): the lookup gives up."""
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as silent:
        await silent.bind(("127.0.0.1", 0))
        with pytest.raises(PeerUnreachable, match="boot.test"):
            await resolve_addr("/dnsaddr/boot.test", txt=txt_from("127.0.0.1", silent.getsockname()[1]))


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("/ip4/127.0.0.1/tcp/4001", "not a peer multiaddr"),
        ("/dns4/boot.test/tcp/4001", "not a peer multiaddr"),
        ("boot.test:4001", "not a multiaddr"),
    ],
)
def test_an_address_that_names_no_peer_is_a_config_error(addr, why):
    with pytest.raises(ConfigError, match=why):
        check_peer_addr(addr)
