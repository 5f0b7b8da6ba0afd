"""Cache-aware routing: prompts remembered by hash chains, and the holder of a prompt's
beginning preferred unless another peer is much faster."""

from __future__ import annotations

from dinet.routing.affinity import BLOCK_CHARS, PrefixMemory, chat_chain, raw_chain
from dinet.routing.select import PeerView, rank_peers

SYSTEM = ("system", "You are terse. " * 40)


def view(peer: str, tokens_per_s: float = 50.0, cached: int = 0, prompt: int = 4000) -> PeerView:
    return PeerView(peer, 10.0, tokens_per_s, 100.0, 0, 0, 1, prompt_chars=prompt, cached_prompt_chars=cached)


def test_a_chats_next_turn_reaches_every_link_of_its_previous_prompt():
    turn1 = [SYSTEM, ("user", "Hi")]
    turn2 = [*turn1, ("assistant", "Hello."), ("user", "And then?")]
    memory = PrefixMemory()
    memory.served("a", chat_chain(turn1))
    assert memory.cached_chars(chat_chain(turn2)) == {"a": chat_chain(turn1)[-1].chars}
    # Another chat with the same system prompt shares only that link.
    other = [SYSTEM, ("user", "Something else")]
    assert memory.cached_chars(chat_chain(other)) == {"a": len(SYSTEM[1])}
    # A chat that differs in its first message shares nothing.
    assert memory.cached_chars(chat_chain([("system", "Other."), ("user", "Hi")])) == {}


def test_a_link_covers_the_role_too():
    assert chat_chain([("user", "x")])[0].digest != chat_chain([("system", "x")])[0].digest


def test_raw_prompts_share_whole_blocks_only():
    document = "word " * 200  # 1000 characters: three whole blocks
    chain = raw_chain(document)
    assert [link.chars for link in chain] == [BLOCK_CHARS, 2 * BLOCK_CHARS, 3 * BLOCK_CHARS]
    memory = PrefixMemory()
    memory.served("a", chain)
    assert memory.cached_chars(raw_chain(document + " Summarise it.")) == {"a": 3 * BLOCK_CHARS}


def test_memory_is_bounded_and_a_failed_peer_is_forgotten():
    memory = PrefixMemory(max_links=4)
    memory.served("a", raw_chain("x" * BLOCK_CHARS * 6))
    assert memory.cached_chars(raw_chain("x" * BLOCK_CHARS * 6)) == {"a": 6 * BLOCK_CHARS}  # the last 4 kept
    assert memory.cached_chars(raw_chain("x" * BLOCK_CHARS * 2)) == {}  # the first ones went
    memory.forget("a")
    assert memory.cached_chars(raw_chain("x" * BLOCK_CHARS * 6)) == {}


def test_the_holder_of_a_long_prompts_beginning_wins_unless_it_is_much_slower():
    # 4000 characters (~1000 tokens) held: ~6.7 s of prefill saved at 50 tokens/s decoding.
    holder = view("b-holder", tokens_per_s=50.0, cached=3900)
    assert rank_peers([view("a"), holder], 64)[0].peer_id == "b-holder"
    assert rank_peers([view("a", tokens_per_s=150.0), holder], 64)[0].peer_id == "b-holder"
    assert rank_peers([view("a", tokens_per_s=1000.0), holder], 64)[0].peer_id == "a"
    # A short prompt saves little: speed decides as before.
    short = view("b-holder", tokens_per_s=50.0, cached=90, prompt=100)
    assert rank_peers([view("a", tokens_per_s=60.0, prompt=100), short], 64)[0].peer_id == "a"
    # Without a cached prefix, the faster one wins as before.
    assert rank_peers([view("a", tokens_per_s=60.0), view("b", tokens_per_s=50.0)], 64)[0].peer_id == "a"


def test_a_busy_holder_still_wins_when_its_cache_saves_more_than_its_queue_costs():
    busy_holder = PeerView("b", 10.0, 50.0, 100.0, 1, 1, 1, prompt_chars=4000, cached_prompt_chars=3900)
    assert rank_peers([view("a"), busy_holder], 32)[0].peer_id == "b"
