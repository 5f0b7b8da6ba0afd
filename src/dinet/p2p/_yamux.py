"""A fix for py-libp2p's yamux: a frame whose turn to be written has come is written whole.

py-libp2p 0.8.1 encrypts a yamux frame (Noise: one nonce per message) once the frame has
the connection's write lock, and then takes the socket's own lock, which is a checkpoint.
A cancellation landing between the two (a caller's timeout, a task group ending; reads
count too, as they send window updates) drops a frame that was already encrypted. The
peer's next nonce then no longer matches: it cannot decrypt another byte and closes the
connection, and every stream on it dies. On a busy connection many frames wait for the
lock and timeouts fire often: under load this cut busy clients off whole nodes.

The library builds its yamux connections itself (it ignores the class given in
`muxer_opt`), so the fix replaces the method on the class, once, before any host runs.
"""

from __future__ import annotations

import trio
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.stream_muxer.yamux.yamux import Yamux

# A frame that cannot be written for this long means the peer stopped reading: the
# connection is given up rather than held by a write nobody can cancel.
FRAME_SEND_LIMIT_S = 30.0


async def _write_frame_whole(self: Yamux, data: bytes) -> None:
    async with self._write_lock:  # waiting for the turn may be cancelled: nothing is encrypted yet
        with trio.CancelScope(shield=True), trio.move_on_after(FRAME_SEND_LIMIT_S) as stuck:
            await self.secured_conn.write(data)
    if stuck.cancelled_caught:  # part of a frame may be out: nothing after it could be read
        with trio.CancelScope(shield=True):
            await self.secured_conn.close()
        raise ConnectionClosedError(f"a frame to {self.peer_id} took over {FRAME_SEND_LIMIT_S:g} s to send")
    await trio.lowlevel.checkpoint()


def keep_frames_whole() -> None:
    """Make every yamux connection of this process write frames whole (idempotent)."""
    Yamux._write_frame = _write_frame_whole  # type: ignore[method-assign]
