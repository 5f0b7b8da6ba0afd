"""`n` choices through the gateway: n answers with seeds seed, seed + 1, ..., asked at once,
streamed or not, read by the official SDK."""

from __future__ import annotations

MODEL = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "Name a colour."}]


def test_n_choices_each_replay_their_own_seed(client, mesh):
    asked = {"model": MODEL, "messages": HELLO, "max_tokens": 8, "temperature": 1.0, "seed": 40}
    reply = client.chat.completions.create(**asked, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    seeds = [(c.model_extra or {})["dinet"]["seed"] for c in reply.choices]
    assert seeds == [40, 41, 42]
    assert reply.usage.completion_tokens == sum(
        client.chat.completions.create(**{**asked, "seed": seed}).usage.completion_tokens for seed in seeds
    )
    for choice, seed in zip(reply.choices, seeds, strict=True):
        alone = client.chat.completions.create(**{**asked, "seed": seed})
        assert choice.message.content == alone.choices[0].message.content
    assert {(c.model_extra or {})["dinet"]["peer_id"] for c in reply.choices} <= {
        n.peer_id for n in mesh.nodes
    }

    texts = ["", ""]
    finished = set()
    for chunk in client.chat.completions.create(**asked, n=2, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1} and texts == [c.message.content for c in reply.choices[:2]]
