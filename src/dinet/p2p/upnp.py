"""`--upnp`: ask the home router (a UPnP Internet Gateway Device) to forward our listen ports.

py-libp2p's own UpnpManager (`new_host(enable_upnp=True)`) gives up when the router's
outside address is in a range Python calls private, which the lab's WAN and many
carrier networks are; and it maps once, for good. Here the mapping is leased and
renewed, and whatever the router says the outside address is only becomes an address
we advertise once peers dial it back (`dinet.p2p.addresses`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import miniupnpc
import trio

logger = logging.getLogger(__name__)

LEASE_S = 3600
RENEW_S = LEASE_S / 2
_DISCOVER_MS = 2000
_DESCRIPTION = "dinet"


async def keep_ports_mapped(
    ports: Callable[[], Sequence[int]],
    mapped: Callable[[list[str]], None],
    *,
    # trio-typing's stubs, which libp2p pulls in, hide trio's own TaskStatus from mypy.
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
) -> None:
    """Map `ports()` (TCP) on the router and renew the lease until cancelled; report the
    outside addresses to `mapped`. Started once the first attempt is over; the mappings
    are removed on the way out."""
    gateway = miniupnpc.UPnP()
    gateway.discoverdelay = _DISCOVER_MS
    done: list[int] = []
    try:
        while True:
            try:
                addrs, done = await trio.to_thread.run_sync(_map, gateway, list(ports()))
            except Exception as exc:  # miniupnpc raises bare Exceptions with the router's words
                logger.warning("--upnp: the router did not map our ports: %s", exc)
                addrs = []
            mapped(addrs)
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            await trio.sleep(RENEW_S)
    finally:
        mapped([])
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await trio.to_thread.run_sync(_unmap, gateway, done)


def _map(gateway: miniupnpc.UPnP, ports: list[int]) -> tuple[list[str], list[int]]:
    if not gateway.lanaddr or not gateway.wanaddr:
        if gateway.discover() == 0:
            raise RuntimeError("no UPnP router answered")
        gateway.selectigd()
    outside = gateway.externalipaddress()
    addrs, done = [], []
    for port in ports:
        gateway.addportmapping(port, "TCP", gateway.lanaddr, port, _DESCRIPTION, "", LEASE_S)
        addrs.append(f"/ip4/{outside}/tcp/{port}")
        done.append(port)
    if addrs:
        logger.info("--upnp: the router forwards %s to %s", addrs, gateway.lanaddr)
    return addrs, done


def _unmap(gateway: miniupnpc.UPnP, ports: list[int]) -> None:
    for port in ports:
        try:
            gateway.deleteportmapping(port, "TCP")
        except Exception as exc:  # the lease runs out anyway
            logger.debug("--upnp: could not remove the mapping of %d: %s", port, exc)
