"""An allowlist: the only peers a host speaks to, kept in a file the operator edits.

One peer id per line; `#` starts a comment; blank lines are fine. The file is read again
whenever it changes (its size, mtime or inode; one stat per check), so adding or removing
a peer needs no restart. A file that turns malformed, or disappears, while the host runs
leaves the last good list in force and is logged; at start it is a ConfigError.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dinet.errors import ConfigError
from dinet.wire.ids import PeerId
from dinet.wire.keys import public_key_of

logger = logging.getLogger(__name__)

_Stamp = tuple[int, int, int]  # (inode, size, mtime in ns): any edit changes one of them


class Allowlist:
    """The peer ids in `path`, reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = _stamp(path)
        self._peers = parse_allowlist(path)

    def allows(self, peer_id: PeerId) -> bool:
        self.refresh()
        return peer_id in self._peers

    @property
    def peers(self) -> frozenset[PeerId]:
        self.refresh()
        return self._peers

    def refresh(self) -> bool:
        """Read the file again if it changed; whether the list changed."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp  # a bad version is reported once, not at every connection
        try:
            peers = parse_allowlist(self.path)
        except ConfigError as exc:
            logger.error("%s; the previous allowlist (%d peers) stays in force", exc, len(self._peers))
            return False
        if peers == self._peers:
            return False
        logger.info(
            "allowlist %s reloaded: %d peers (%d added, %d removed)",
            self.path,
            len(peers),
            len(peers - self._peers),
            len(self._peers - peers),
        )
        self._peers = peers
        return True


def parse_allowlist(path: Path) -> frozenset[PeerId]:
    """The peer ids in an allowlist file; ConfigError naming the file and the bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"cannot read the allowlist {path}: {reason}") from None
    peers: set[PeerId] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            public_key_of(entry)
        except ValueError:
            shown = entry if len(entry) <= 80 else entry[:80] + "…"
            raise ConfigError(f"allowlist {path} line {number}: {shown!r} is not a peer id") from None
        peers.add(PeerId(entry))
    return frozenset(peers)


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
