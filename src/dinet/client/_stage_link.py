"""The client's end of one stage's session: one long-lived stream.

The client sends the prompt into the first stage; from then on the stages pass each
step on among themselves, and only the last stage's sampled tokens (or a stage's
error) come back on these streams."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import trio

from dinet.errors import MalformedMessage, PeerError, PeerStalled, RemoteError
from dinet.p2p.host import PeerHost
from dinet.p2p.streams import FramedStream, open_framed
from dinet.routing.shard import StageOffer
from dinet.wire.ids import SHARD_PROTOCOL, ModelHash, PeerId
from dinet.wire.messages import ErrorFrame, GenerationParams
from dinet.wire.shard import (
    Draft,
    HiddenDType,
    ShardClose,
    ShardOpen,
    ShardOpened,
    ShardRelay,
    ShardReplies,
    ShardSampled,
    ShardStep,
    decode_shard_reply,
    tensor_frames,
)
from dinet.wire.stage_receipt import step_digest

if TYPE_CHECKING:
    from dinet.client.stage_audit import CheckTicket

OPEN_TIMEOUT_S = 5.0
OPEN_REPLY_S = 30.0  # the stage tokenizes the prompt (first/last) before it answers

Tensor = npt.NDArray[np.generic]  # (rows, 1) int32 ids or (rows, n_embd) hidden states


@dataclass
class StageLink:
    offer: StageOffer
    framed: FramedStream
    session_id: str
    n_embd: int
    prompt_ids: tuple[int, ...]

    @property
    def peer_id(self) -> PeerId:
        return self.offer.peer_id

    @classmethod
    async def open(
        cls,
        host: PeerHost,
        offer: StageOffer,
        model_hash: ModelHash,
        params: GenerationParams,
        dtype: HiddenDType,
        session_id: str,
        relay: ShardRelay,
        draft: Draft = "none",
        ticket: CheckTicket | None = None,
    ) -> StageLink:
        """A session on the stage whose outputs go on to `relay` (see `/dinet/shard/1`),
        checked if a `ticket` is given (`dinet.client.stage_audit`)."""
        peer_id = offer.peer_id
        framed = await open_framed(host, peer_id, SHARD_PROTOCOL, OPEN_TIMEOUT_S)
        try:
            await framed.send(
                ShardOpen(
                    session_id=session_id,
                    model_hash=model_hash,
                    span=(offer.start, offer.stop),
                    params=params,
                    dtype=dtype,
                    relay=relay,
                    draft=draft,
                    nonce=None if ticket is None else ticket.nonce,
                    audit_commit=None if ticket is None else ticket.commit,
                )
            )
            with trio.move_on_after(OPEN_REPLY_S):
                reply = await next_reply(framed)
                if reply is None:
                    raise PeerError(f"{peer_id} ended the shard stream")
                if not isinstance(reply, ShardOpened) or reply.session_id != session_id:
                    raise MalformedMessage(f"{peer_id} answered an open with {reply.kind}")
                return cls(offer, framed, session_id, reply.n_embd, reply.prompt_ids)
            raise PeerStalled(f"{peer_id} sent nothing for {OPEN_REPLY_S:.1f} s")
        except BaseException:
            with trio.CancelScope(shield=True):
                await framed.reset()
            raise

    async def send_prompt(self, ids: Tensor, seq: int, *, sample: bool) -> str:
        """One prefill step into the first stage: (rows, 1) int32 token ids; their digest."""
        header = ShardStep(session_id=self.session_id, seq=seq, rows=ids.shape[0], dtype="i32", sample=sample)
        rows = np.ascontiguousarray(ids, dtype=np.int32)
        await self.framed.send_framed(tensor_frames(header, rows))
        return step_digest(rows.tobytes())

    async def receive(self) -> ShardSampled | None:
        """The stage's next reply: a sampled token (last stage), or None when the stream ends.

        RemoteError for an error frame (a relay that failed comes as one)."""
        reply = await next_reply(self.framed)
        if reply is not None and not isinstance(reply, ShardSampled):
            raise MalformedMessage(f"{self.peer_id} sent {reply.kind} in a relayed session")
        return reply

    async def close(self, *, clean: bool) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2.0):
            if clean:
                try:
                    await self.framed.send(ShardClose(session_id=self.session_id))
                except PeerError:
                    pass  # gone already: its session is freed with the stream
                await self.framed.close()
            else:
                await self.framed.reset()


async def next_reply(framed: FramedStream) -> ShardReplies | None:
    """The next reply on a stage's stream, or None at its end; RemoteError for an error frame."""
    payload = await framed.receive()
    if payload is None:
        return None
    reply = decode_shard_reply(payload)
    if isinstance(reply, ErrorFrame):
        raise RemoteError(reply.code, reply.message)
    return reply
