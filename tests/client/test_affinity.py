"""Cache-aware routing through the shared mesh: a chat's next turns go to the peer that
answered its first, which holds its beginning in its prefix cache."""

from __future__ import annotations

import dinet

SYSTEM = "You are a gardener. Answer in one short sentence. " * 20  # ~250 tokens to prefill
QUESTIONS = ["When do I plant tomatoes?", "And how deep?", "How often should I water them?"]


def test_a_chats_later_turns_go_to_the_peer_holding_its_beginning(tmp_path, mesh):
    # Routing alone: no probation checks (their verifiers' scoring may sway the router here:
    # CI saw turn 2 leave the holder once with them on).
    with dinet.Client(bootstrap=mesh.bootstrap, home=tmp_path, mdns=False, probation_good=0) as client:
        natural = client.ask("Name a river.", max_tokens=4).peer_id  # the router's own choice
        holder = next(n.peer_id for n in mesh.nodes if n.peer_id != natural)
        messages = [{"role": "system", "content": SYSTEM}]
        peers = []
        for i, question in enumerate(QUESTIONS):
            messages.append({"role": "user", "content": question})
            only = {"only_peers": [holder]} if i == 0 else {}  # the first turn goes elsewhere
            answer = client.chat(messages, max_tokens=8, **only)
            peers.append(answer.peer_id)
            messages.append({"role": "assistant", "content": answer.text})
    assert peers == [holder] * len(QUESTIONS), (natural, holder, peers)
