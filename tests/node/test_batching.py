"""A node with `--max-concurrent 3` decodes its requests together (`engine.llama._slots`):
answered concurrently through the network, and each answer verified by another peer."""

from __future__ import annotations

import re

import trio
from tests.helpers import answer_to, chat

from dinet.client.network import open_network
from dinet.node.local_mesh import start_node

QUESTIONS = ["Name three rivers.", "Describe a forest.", "Why do cats purr?"]


async def test_a_node_with_three_slots_answers_three_at_once_and_each_answer_verifies(
    tmp_path, mesh, client_settings
) -> None:
    slots = ["--max-concurrent", "3"]
    # Patient dials: this module may run beside a 26-node one, and a starved node once took
    # over the default 5 s to open a stream; only one peer may answer here.
    patient = client_settings.model_copy(update={"dial_timeout_s": 30.0})
    node = start_node(tmp_path / "batched", bootstrap=mesh.bootstrap[:1], extra_args=slots)
    try:
        async with open_network(patient) as network:
            await network.discover(None, node.model_hash, timeout=60, want=len(mesh.nodes) + 1)
            answers = {}

            async def one(i: int) -> None:
                _, answers[i] = await answer_to(
                    network, chat(QUESTIONS[i], max_tokens=48), verify_rate=1.0, only_peers={node.peer_id}
                )

            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(one, i)
            manifest = network.directory.get(node.peer_id)
    finally:
        node.stop()
    assert manifest is not None and manifest.max_concurrent == 3
    for answer in answers.values():
        assert answer.peer_id == node.peer_id
        assert answer.verification is not None and answer.verification.verified, answer.verification
        assert answer.verification.verifier != node.peer_id
    running = [int(n) for n in re.findall(r"(\d+) running", (node.home / "worker.log").read_text())]
    assert len(running) == 3 and max(running) >= 2, running  # they were decoded together
