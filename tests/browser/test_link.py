"""The browser link: a page in headless Chromium joins a real node over /ws and /wss with
js-libp2p (Noise, yamux, identify), queries its manifests, and holds a relay slot on it
through which another py-libp2p node process reaches the tab."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from _engine_tab import chromium_browser
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from playwright.sync_api import Page
from tests.gateway._gateway_helpers import start_gateway

from dinet.node.local_mesh import NodeProcess, start_node
from dinet.wire.ids import MANIFEST_PROTOCOL
from dinet.wire.manifest import SignedManifest, verify_manifest

HERE = Path(__file__).parent

# In the page: a fresh ed25519 key, a link to the gateway's node, what identify learned,
# and the node's manifests over /dinet/manifest/1.
QUERY_NODE = """async ({scheme, reserve}) => {
  const m = await import('/browser/dinet-node.js');
  const entry = await (await fetch('/api/browser')).json();
  const addrs = entry.addrs.filter((a) => a.split('/').includes(scheme));
  const link = await m.openLink({ privateKey: await m.generateKeyPair('Ed25519'), addrs, reserve });
  const node = link.libp2p.getPeers().find((p) => p.toString() === entry.peer_id);
  let protocols = [];
  for (let i = 0; i < 100 && !protocols.includes(m.MANIFEST_PROTOCOL); i++) {
    protocols = (await link.libp2p.peerStore.get(node)).protocols;  // identify fills it
    await new Promise((r) => setTimeout(r, 50));
  }
  const manifests = await link.queryManifests();
  const conn = link.libp2p.getConnections(node)[0];
  const out = {entry, tab: link.peerId, protocols, manifests, dialed: conn.remoteAddr.toString()};
  await link.close();
  return out;
}"""


@contextmanager
def _page(**context: Any) -> Iterator[Page]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed: run `make system-deps` (apt-get install chromium)")
    with chromium_browser(chromium) as browser:
        page = browser.new_context(**context).new_page()
        page.on("console", lambda m: print(f"[tab] {m.type}: {m.text}"))
        yield page


@contextmanager
def _node(home: Path, bundle: Path, listen: list[str], extra: list[str] = ()) -> Iterator[NodeProcess]:
    """A real `din node` (no model: its manifest is what is under test) with its API beside it."""
    args = [a for addr in listen for a in ("--listen", addr)]
    node = start_node(
        home,
        no_model=True,
        extra_args=[*args, "--api-port", "0", *extra],
        env={"DINET_BROWSER_DIR": str(bundle)},
    )
    try:
        yield node
    finally:
        node.stop()


def _check_node_answer(result: dict[str, Any], node: NodeProcess, scheme: str) -> None:
    entry = result["entry"]
    assert entry["peer_id"] == node.peer_id and entry["relay"] is True
    assert f"/{scheme}/p2p/{node.peer_id}" in result["dialed"]  # the tab's connection runs over it
    assert MANIFEST_PROTOCOL in result["protocols"], "identify should list the node's protocols"
    own = verify_manifest(SignedManifest.model_validate(result["manifests"][0]))
    assert own.peer_id == node.peer_id


@pytest.fixture(scope="module")
def ws_node(tmp_path_factory, browser_bundle) -> Iterator[NodeProcess]:
    listen = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws"]
    with _node(tmp_path_factory.mktemp("ws-node"), browser_bundle, listen) as node:
        yield node


def test_api_browser_names_the_nodes_websocket_addresses(ws_node):
    entry = httpx.get(f"{ws_node.printed['api']}/api/browser").json()
    assert entry["peer_id"] == ws_node.peer_id
    assert entry["addrs"] and all(a.endswith(f"/ws/p2p/{ws_node.peer_id}") for a in entry["addrs"])
    # The node listens on TCP too, for its py peers: that address is not for tabs.
    assert any("/ws/" not in a for a in ws_node.addrs)


def test_a_gateway_beside_no_node_names_none(ws_node, tmp_path):
    gateway = start_gateway(tmp_path, ["--bootstrap", _tcp_addr(ws_node)])
    try:
        reply = httpx.get(f"{gateway.url}/api/browser")
    finally:
        gateway.stop()
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "no_node"


def _tcp_addr(node: NodeProcess) -> str:
    return next(a for a in node.addrs if "/ws" not in a)


def test_tab_dials_a_node_over_ws_and_gets_its_signed_manifest(ws_node):
    with _page() as page:
        page.goto(ws_node.printed["api"])
        result = page.evaluate(QUERY_NODE, {"scheme": "ws", "reserve": False})
    _check_node_answer(result, ws_node, "ws")


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, made here, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dinet test node")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tab_dials_a_node_over_wss_with_a_self_signed_certificate(tmp_path, browser_bundle):
    cert, key = _self_signed(tmp_path)
    listen = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws", "/ip4/127.0.0.1/tcp/0/wss"]
    extra = ["--ws-cert", str(cert), "--ws-key", str(key)]
    with _node(tmp_path / "node", browser_bundle, listen, extra) as node:
        # The node listens on /ws and /wss at once: TLS on the second only.
        schemes = {a.split("/")[5] for a in node.addrs if "/ws" in a}
        assert schemes == {"ws", "wss"}
        # Chromium is told to trust this certificate (a real deployment has a trusted one).
        with _page(ignore_https_errors=True) as page:
            page.goto(node.printed["api"])
            result = page.evaluate(QUERY_NODE, {"scheme": "wss", "reserve": False})
            _check_node_answer(result, node, "wss")
            # And the plain /ws listener of the same node still speaks no TLS.
            result = page.evaluate(QUERY_NODE, {"scheme": "ws", "reserve": False})
            _check_node_answer(result, node, "ws")


# In the page: a link that reserves a relay slot on the node, and a stub /dinet/manifest/1
# handler (the real ones are the browser node's) that answers with a manifest naming the tab.
SERVE_STUB = """async () => {
  const m = await import('/browser/dinet-node.js');
  const entry = await (await fetch('/api/browser')).json();
  window.queries = [];
  await m.registerHandler(m.MANIFEST_PROTOCOL, async (framed) => {
    const query = await framed.receive();
    window.queries.push({query, from: framed.remotePeer});
    const body = JSON.stringify({peer_id: window.link.peerId, stub: true});
    await framed.send({kind: 'manifests', manifests: [{kind: 'manifest', body, signature: 'stub'}]});
    await framed.close();
  });
  window.link = await m.openLink({ privateKey: await m.generateKeyPair('Ed25519'), addrs: entry.addrs });
  return {tab: window.link.peerId, node: entry.peer_id, circuits: window.link.circuitAddrs()};
}"""


def test_a_py_node_reaches_the_tab_through_its_relay(ws_node):
    with _page() as page:
        page.goto(ws_node.printed["api"])
        ids = page.evaluate(SERVE_STUB)
        assert ids["node"] == ws_node.peer_id
        # Where the tab says it is reachable (from its reservation): through the node's TCP port.
        circuit = f"{_tcp_addr(ws_node)}/p2p-circuit/p2p/{ids['tab']}"
        assert circuit in ids["circuits"], ids["circuits"]
        dialer = subprocess.run(
            [sys.executable, str(HERE / "_circuit_dialer.py"), circuit],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert dialer.returncode == 0, dialer.stderr[-3000:]
        report = json.loads(dialer.stdout.strip().splitlines()[-1])
        queries = page.evaluate("window.queries")
    assert report["tab"] == ids["tab"] and report["link"] == "relayed"
    # Both ways: the dialer's query reached the tab, the tab's answer reached the dialer.
    # (The node asks the tab too: it passes on the manifests of peers it relays for.)
    [seen] = [q for q in queries if q["from"] != ws_node.peer_id]
    assert seen["query"]["kind"] == "manifest_query"
    [stub] = report["manifests"]
    assert json.loads(stub["body"]) == {"peer_id": ids["tab"], "stub": True}
