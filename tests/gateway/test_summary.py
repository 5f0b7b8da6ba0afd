"""The page's summary of a big network: groups, links and chains, from fake manifests."""

from __future__ import annotations

import json

from _fake_network import CHAIN_MODEL, FakeDirectory, expected_groups, fake_peers

from dinet.gateway._series import ChainUsed
from dinet.gateway._summary import summarize


def test_peers_are_counted_in_their_region_and_model_group_with_their_links():
    peers = fake_peers(120, seed=3)
    fake = FakeDirectory(peers)
    summary = summarize(fake.manifests, fake.links.get, [])
    groups = {(g["region"], g["model"]): g for g in summary["groups"]}
    assert {key: g["peers"] for key, g in groups.items()} == dict(expected_groups(peers))
    for (region, model), g in groups.items():
        members = [p for p in peers if (p.region, p.model) == (region, model)]
        assert g["relayed"] == sum(p.link == "relayed" for p in members)
        assert g["direct"] + g["relayed"] + g["unlinked"] == g["peers"]
        assert g["stages"] == (len(members) if model == CHAIN_MODEL else 0)
    assert summary["peers"] == 120
    assert summary["links"]["relayed"] == sum(p.link == "relayed" for p in peers)
    assert summary["links"]["none"] == sum(p.link is None for p in peers)


def test_a_chain_names_the_region_of_each_stage_and_none_for_a_peer_gone():
    peers = fake_peers(40, seed=4)
    fake = FakeDirectory(peers)
    first, second = peers[0], peers[1]
    gone = "12D3KooWGoneGoneGoneGoneGoneGoneGoneGoneGoneGone"
    used = ChainUsed(CHAIN_MODEL, (first.peer_id, second.peer_id, gone), 3, 12.0)
    (chain,) = summarize(fake.manifests, fake.links.get, [used])["chains"]
    assert chain["model"] == CHAIN_MODEL and chain["uses"] == 3
    assert [s["region"] for s in chain["stages"]] == [first.region, second.region, None]


def test_the_summary_stays_small_at_a_thousand_peers():
    """What the page fetches every refresh grows with the groups, not with the peers."""
    fake = FakeDirectory(fake_peers(1000, seed=5))
    size = len(json.dumps(summarize(fake.manifests, fake.links.get, [])))
    assert size < 12_000, size
