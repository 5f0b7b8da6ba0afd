"""A real `din gateway` process in front of the test mesh, and clients for it."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from _gateway_helpers import API_KEY, GatewayProcess, start_gateway, wait_for_peers


@pytest.fixture(scope="session")
def gateway(mesh, tmp_path_factory) -> Iterator[GatewayProcess]:
    """`din gateway` with an API key, bootstrapped from the first node of the mesh."""
    running = start_gateway(
        tmp_path_factory.mktemp("gateway"), ["--bootstrap", mesh.bootstrap[0], "--api-key", API_KEY]
    )
    try:
        wait_for_peers(running, 1)
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    """The official OpenAI client, pointed at the gateway; no retries, so errors show at once."""
    return openai.OpenAI(base_url=gateway.base_url, api_key=API_KEY, max_retries=0, timeout=120)
