"""What every `din` command shares: logging, running trio, and turning errors into one line."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import typer

from dinet.errors import first_dinet_error

_QUIET_LIBRARIES = ("libp2p", "multiaddr", "zeroconf", "async_service")


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # py-libp2p logs routine failures (DHT probes, closed streams) at ERROR: keep them out
    # of a user's terminal unless asked for with -vv.
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run `main` under trio until it returns or SIGINT/SIGTERM arrives; errors exit 1."""

    async def guarded() -> Any:
        async with trio.open_nursery() as nursery:
            result: list[Any] = []

            async def body() -> None:
                result.append(await main())
                nursery.cancel_scope.cancel()

            nursery.start_soon(_cancel_on_signal, nursery.cancel_scope)
            nursery.start_soon(body)
        return result[0] if result else None

    try:
        return trio.run(guarded)
    except BaseException as exc:
        error = first_dinet_error(exc)
        if error is None:
            raise
        fail(str(error))


async def _cancel_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()
