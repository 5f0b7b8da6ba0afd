"""The gateway's `x-dinet-deadline-ms` header, with one real node behind a real gateway."""

from __future__ import annotations

import httpx
import pytest
from _gateway_helpers import start_gateway, wait_for_peers

from dinet.node.local_mesh import start_node

HELLO = [{"role": "user", "content": "Hi."}]


@pytest.fixture(scope="module")
def one_node_gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("deadline")
    node = start_node(root / "node")
    try:
        gateway = start_gateway(root / "gateway", ["--bootstrap", node.addr])
        try:
            wait_for_peers(gateway, 1)
            yield gateway, node
        finally:
            gateway.stop()
    finally:
        node.stop()


def complete(gateway, headers=None, max_tokens=8) -> httpx.Response:
    body = {"model": "smollm2-135m-instruct", "messages": HELLO, "max_tokens": max_tokens}
    return httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers or {}, timeout=120)


def test_the_deadline_header_is_honoured(one_node_gateway):
    gateway, node = one_node_gateway
    warm = complete(gateway)  # the node measures its speed on a first answer
    assert warm.status_code == 200, warm.text
    # A generous deadline: answered, max_tokens capped to what fits if need be.
    roomy = complete(gateway, {"x-dinet-deadline-ms": "60000"})
    assert roomy.status_code == 200, roomy.text
    assert roomy.json()["choices"][0]["message"]["content"]
    # An impossible one: the node refuses at once and the gateway says why.
    hopeless = complete(gateway, {"x-dinet-deadline-ms": "1"})
    assert hopeless.status_code == 504, hopeless.text
    error = hopeless.json()["error"]
    assert error["code"] == "deadline_unmet" and error["type"] == "timeout"
    assert "within 0.001 s" in error["message"]


@pytest.mark.parametrize("value", ["soon", "-5", "0", "1.5", "99999999999"])
def test_a_malformed_deadline_header_is_a_400_naming_it(one_node_gateway, value):
    gateway, _ = one_node_gateway
    refused = complete(gateway, {"x-dinet-deadline-ms": value})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "x-dinet-deadline-ms"
