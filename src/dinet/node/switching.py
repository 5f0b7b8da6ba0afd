"""Serving one model version after another without dropping a stream (`din node --follow`).

A node runs `_run` with one `Serving` for its whole life. `ServingSwitch.serving` is
that one: its handlers pass each new stream to the version current when the stream
opens, and its fields say what the current version offers. `switch_to` starts the
next version (its engine, its chunk keeper, its DHT announcements), makes it current
once it serves, and retires the old one: the streams it has in flight run to their end
on its engine, which is closed after the last of them. Model files are never deleted
here, so the old version's bytes stay until its engine is gone (and after).

`din node --serve auto` switches the same way between models, and to none (`switch_to(None)`:
the node stays up, routing, and serves nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import trio

from dinet.node._serving import Serving
from dinet.p2p.joining import Joiner
from dinet.p2p.streams import Handler, Stream
from dinet.wire.ids import ModelHash

logger = logging.getLogger(__name__)

# A version's Serving, from its model hash (None: the model the settings name).
OpenVersion = Callable[[ModelHash | None], AbstractAsyncContextManager[Serving]]


class _Version:
    """One served version and the streams it has in flight."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self.streams = 0
        self.retired = False
        self.drained = trio.Event()  # retired, and its last stream has ended
        self.background = trio.CancelScope()  # its keeper and DHT announcements

    def enter(self) -> None:
        self.streams += 1

    def leave(self) -> None:
        self.streams -= 1
        if self.retired and self.streams == 0:
            self.drained.set()

    def retire(self) -> None:
        self.retired = True
        if self.streams == 0:
            self.drained.set()


async def hold_version(
    open_version: OpenVersion,
    model_hash: ModelHash | None,
    task_status: trio.TaskStatus[_Version] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
) -> None:
    """Serve one version from start until it is retired and drained, then close it."""
    async with open_version(model_hash) as serving:
        version = _Version(serving)
        task_status.started(version)
        await version.drained.wait()
        version.background.cancel()
    logger.info("model %s: its last stream ended, its engine is closed", str(serving.model_hash)[:16])


class ServingSwitch:
    """The node's one `Serving`, passing work to whichever version is current."""

    def __init__(
        self,
        versions: trio.Nursery,
        open_version: OpenVersion,
        first: _Version,
        protocols: tuple[str, ...] = (),
    ) -> None:
        """`protocols`: the protocols a later version may speak besides the first's (a node
        that starts serving nothing registers them all at once)."""
        self._versions = versions  # where each version's hold_version task runs
        self._open_version = open_version
        self._current = first
        self._live = [first]  # current and retired-but-not-drained versions
        self._background: tuple[trio.Nursery, Joiner] | None = None
        self._running = trio.Event()
        s = first.serving
        self.serving = Serving(
            s.model_id,
            s.model_hash,
            {protocol: self._dispatch(protocol) for protocol in (*s.handlers, *protocols)},
            s.offer,
            lambda: self._current.serving.figures(),
            available=lambda: self._current.serving.available(),
            state=lambda: self._current.serving.state(),
            busy=lambda: any(v.serving.busy() for v in self._live),
            background=[self._run],
        )

    @property
    def model_hash(self) -> ModelHash | None:
        return self._current.serving.model_hash

    def _dispatch(self, protocol: str) -> Handler:
        async def handle(stream: Stream) -> None:
            version = self._current  # the stream stays on it, whatever comes after
            handler = version.serving.handlers.get(protocol)
            if handler is None:  # the current version does not speak it
                await stream.reset()
                return
            version.enter()
            try:
                await handler(stream)
            finally:
                version.leave()

        return handle

    async def _run(self, joiner: Joiner) -> None:
        """Each version's own background tasks, for as long as it is served."""
        async with trio.open_nursery() as nursery:
            self._background = (nursery, joiner)
            self._start_background(self._current)
            self._running.set()
            await trio.sleep_forever()

    def _start_background(self, version: _Version) -> None:
        assert self._background is not None
        nursery, joiner = self._background

        async def run_all() -> None:
            with version.background:
                async with trio.open_nursery() as inner:
                    for task in version.serving.background:
                        inner.start_soon(task, joiner)

        nursery.start_soon(run_all)

    async def switch_to(self, model_hash: ModelHash | None) -> bool:
        """Serve `model_hash` (None: nothing) from now on, the current version finishing
        its streams; False (and the current version kept) if the new one cannot serve."""
        await self._running.wait()
        new: _Version = await self._versions.start(hold_version, self._open_version, model_hash)
        if model_hash is not None and (not new.serving.available() or new.serving.offer is None):
            logger.error("model %s cannot be served: keeping %s", model_hash[:16], str(self.model_hash)[:16])
            new.retire()
            return False
        old, self._current = self._current, new
        self._live.append(new)
        self.serving.model_id, self.serving.model_hash = new.serving.model_id, new.serving.model_hash
        self.serving.offer = new.serving.offer  # the manifest offers the new version from now on
        self._start_background(new)
        logger.info(
            "now serving %s; %s finishes its %d stream(s) in flight",
            str(model_hash)[:16],
            str(old.serving.model_hash)[:16],
            old.streams,
        )
        old.retire()
        self._versions.start_soon(self._forget_when_drained, old)
        return True

    async def _forget_when_drained(self, version: _Version) -> None:
        await version.drained.wait()
        self._live.remove(version)
