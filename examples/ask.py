"""Asking a dinet network from plain Python: an answer, a streamed answer, a chat, the peers.

    python examples/ask.py /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...

Start a node first (`din node` prints its address), or run `din demo`. `--home DIR`
keeps this client's identity, receipts and reputations there (default: the user data
directory, shared with `din ask`).
"""

from __future__ import annotations

import argparse

import dinet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bootstrap", nargs="+", help="multiaddr of a peer to join through")
    parser.add_argument("--home", help="state directory of this client")
    args = parser.parse_args()

    with dinet.Client(bootstrap=args.bootstrap, home=args.home, mdns=False) as client:
        # One answer. Greedy by default (temperature 0): every honest peer gives the same one.
        answer = client.ask("What is the capital of France?", max_tokens=24)
        print(answer.text)
        print(f"-- served by {answer.peer_id}: {answer.usage.completion_tokens} tokens")

        # Tokens as they arrive; the Answer (who served it, usage, ...) once they are all in.
        stream = client.stream("Count from one to five.", max_tokens=24)
        for text in stream:
            print(text, end="", flush=True)
        assert stream.answer is not None
        print(f"\n-- streamed by {stream.answer.peer_id}")

        # A conversation, as OpenAI-style messages; checked by another peer (verify_rate=1).
        reply = client.chat(
            [
                {"role": "system", "content": "You answer in one short sentence."},
                {"role": "user", "content": "Why is the sky blue?"},
            ],
            max_tokens=32,
            temperature=0.7,
            seed=1,
            verify_rate=1.0,
        )
        print(reply.text)
        if reply.verification is not None:
            print(f"-- verified: {reply.verification.verified} (by {reply.verification.verifier})")

        for peer in client.peers():
            models = ", ".join(m.model_id for m in peer.models)
            print(f"peer {peer.peer_id} [{models}] {peer.tokens_per_s:.0f} tok/s")

        try:  # every error is a dinet.DinetError; bad options are refused before anything is sent
            client.ask("Hello", max_price=-1)
        except dinet.RequestError as exc:
            print(f"refused: {exc}")


if __name__ == "__main__":
    main()
