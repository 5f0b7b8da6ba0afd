"""A tab contributes and is treated like any peer: headless Chromium opens the page of a
real node (its gateway beside it, listening on /ws too), presses "contribute" through
`contribute()`, and from then on `din ask --peer <tab>` finds the tab through that node,
reaches it through the node's relay, gets a streamed answer that a native peer verifies,
and countersigns the tab's receipt. A tab closed mid-answer is failed over like a killed
node: the answer completes on a native peer, text intact."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from _engine_tab import chromium_browser
from playwright.sync_api import Browser, Page
from tests.helpers import answer_to, chat

from dinet.client.network import Network, open_network
from dinet.config import ClientSettings
from dinet.node.local_mesh import NodeProcess, start_node

ASK_TIMEOUT_S = 240
HERE = Path(__file__).parent

CONTRIBUTE = """async () => {
  const m = await import('/browser/dinet-node.js');
  window.contribution = await m.contribute({ threads: 1 });
  return window.contribution.peerId;
}"""


@pytest.fixture(scope="module")
def home(tmp_path_factory, browser_bundle) -> Iterator[NodeProcess]:
    """The node the tab joins: its API and page beside it, a /ws listener for tabs."""
    node = start_node(
        tmp_path_factory.mktemp("home"),
        extra_args=["--listen", "/ip4/127.0.0.1/tcp/0/ws", "--api-port", "0"],
        env={"DINET_BROWSER_DIR": str(browser_bundle)},
    )
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def native(tmp_path_factory, home) -> Iterator[NodeProcess]:
    """Another native node of the same model: the verifier, and where a failover lands."""
    node = start_node(
        tmp_path_factory.mktemp("native"),
        bootstrap=[_tcp(home)],
        extra_args=["--price", "0.001"],
    )
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def browser(chromium) -> Iterator[Browser]:
    with chromium_browser(chromium) as launched:
        yield launched


@pytest.fixture(scope="module")
def tab(home, native, browser) -> tuple[Page, str]:
    return _contribute(browser, home)


def _contribute(browser: Browser, home: NodeProcess) -> tuple[Page, str]:
    """A new tab (its own context: its own IndexedDB, so its own identity) that contributes."""
    page = browser.new_context().new_page()
    page.on("console", lambda m: print(f"[tab] {m.type}: {m.text}"))
    page.goto(home.printed["api"])
    return page, page.evaluate(CONTRIBUTE)


def test_a_tab_serves_a_verified_answer_and_signs_its_receipt(tab, home, native, tmp_path):
    page, tab_id = tab
    answer = _ask(tmp_path, home, tab_id, "--verify", "--max-tokens", "16", "Name three rivers.")
    assert answer["peer_id"] == tab_id and answer["peers_tried"] == [tab_id]
    assert answer["text"] and answer["usage"]["completion_tokens"] == 16
    check = answer["verification"]
    assert check["verified"] is True and check["verifier"] in {home.peer_id, native.peer_id}, check
    assert len(answer["receipts"]) == 1 and answer["refused_receipts"] == []
    # The client countersigned only after checking the tab's signature (node = the tab).
    page.wait_for_function("() => window.contribution.service.stats.countersigned > 0", timeout=15_000)
    stats = page.evaluate("() => window.contribution.service.stats")
    assert stats["served"] == 1 and stats["countersigned"] == 1 and stats["tokens"] == 16


def test_the_tab_is_listed_by_its_node(tab, home, tmp_path):
    _, tab_id = tab
    peers = _din(tmp_path, "peers", "--json", "--bootstrap", _tcp(home))
    listed = {p["peer_id"]: p for p in peers} if isinstance(peers, list) else {}
    assert tab_id in listed, peers


def test_the_tab_answers_probes_so_its_node_keeps_it(tab, home):
    page, tab_id = tab
    # Its node watches it like any neighbour: pings it, and would drop it (and its relay
    # slot) if it did not answer.
    page.wait_for_function("() => window.contribution.member.answered > 0", timeout=30_000)
    circuit = f"{_tcp(home)}/p2p-circuit/p2p/{tab_id}"
    done = subprocess.run(
        [sys.executable, str(HERE / "_swim_prober.py"), circuit], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # A ping that says the tab is suspect (at 2^62): acked, same probe id, and refuted.
    ack = report["ping"]
    assert ack["kind"] == "swim_ack" and ack["probe_id"] == 2**62, ack
    assert ack["incarnation"] == 2**62 + 1
    assert ack["news"] == [{"peer_id": tab_id, "state": "alive", "incarnation": ack["incarnation"]}]
    # A tab pings no one for others: a nack. A frame that is no request: a reset.
    assert report["ping_req"] == {"kind": "swim_nack", "probe_id": 7}
    assert set(report["garbage"]) == {"ended"}, report  # no answer, whether reset or closed
    assert f"peer {tab_id} is dead" not in home.log_path.read_text(errors="replace")


def test_a_tab_closed_mid_answer_is_failed_over_text_intact(browser, home, native, tmp_path):
    page, tab_id = _contribute(browser, home)  # a tab of its own, idle: the client sees it free
    outcome: dict[str, Any] = {}

    async def ask_both() -> None:
        settings = ClientSettings(
            home=tmp_path / "client", bootstrap=[_tcp(home)], mdns=False, probation_good=0
        )
        async with open_network(settings) as network:
            # Both met first: the client would otherwise route as soon as it met one of them
            # (others serve the model too: the home node, and the module's first tab).
            await _meet(network, native.model_hash, {tab_id, native.peer_id})
            outcome["answer"] = await answer_to(
                network,
                chat("Tell me about the sea.", max_tokens=48),
                only_peers=frozenset({tab_id, native.peer_id}),
                policy="cost",  # the free tab first: the native node charges
            )

    def run() -> None:
        try:
            trio.run(ask_both)
        except BaseException as exc:  # shown by the failure below
            outcome["error"] = exc

    asking = threading.Thread(target=run, daemon=True)
    asking.start()
    sent = _close_after_tokens(page, 5, asking)
    asking.join(ASK_TIMEOUT_S)
    assert "answer" in outcome, repr(outcome.get("error"))
    text, answer = outcome["answer"]
    assert answer.peers_tried == (tab_id, native.peer_id), (answer.peers_tried, tab_id)
    assert answer.peer_id == native.peer_id
    # Intact: what the tab sent, then the native node's continuation after those tokens,
    # every token counted once. (Not compared with a native-only answer: the tab's
    # WebAssembly arithmetic picks the other of two near-equal tokens in about half the
    # answers, docs/browser.md, so its part may differ from what the native would say.)
    assert sent and text.startswith(sent) and len(text) > len(sent) and answer.text == text
    assert answer.usage.completion_tokens == 48


async def _meet(network: Network, model_hash: str, peers: set[str]) -> None:
    """Look until every one of `peers` is a candidate for the model, their round trips known."""
    with trio.fail_after(90):
        while not peers <= {p.peer_id for p in network.candidates(None, model_hash)}:
            await network.look(None, model_hash)
            await trio.sleep(0.5)
        await network.discover(None, model_hash, timeout=30, want=len(peers))


def _close_after_tokens(page: Page, count: int, asking: threading.Thread) -> str:
    """Wait until the tab has produced `count` tokens of its current answer, then close it;
    the text of the token frames it had sent."""
    deadline = time.monotonic() + ASK_TIMEOUT_S
    while time.monotonic() < deadline:
        if not asking.is_alive():
            return ""  # the answer ended before: the caller's checks say how
        current = page.evaluate("() => window.contribution.service.current")
        if current["tokens"] >= count:
            page.close()
            return str(current["sent"])
        time.sleep(0.05)
    pytest.fail(f"the tab never produced {count} tokens")


def _tcp(node: NodeProcess) -> str:
    return next(a for a in node.addrs if "/ws" not in a)


def _ask_args(home_dir: Path, node: NodeProcess, peers: list[str], args: tuple[str, ...]) -> list[str]:
    home_dir.mkdir(parents=True, exist_ok=True)
    only = [a for peer in peers for a in ("--peer", peer)]
    # No probation: one native verifier is all this network has (docs/trust.md, Probation).
    return [sys.executable, "-m", "dinet", "ask", "--json", "--no-mdns", "--home", str(home_dir),
            "--probation-good", "0", "--bootstrap", _tcp(node), *only, *args]  # fmt: skip


def _ask(home_dir: Path, node: NodeProcess, peer: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        _ask_args(home_dir, node, [peer], args), capture_output=True, text=True, timeout=ASK_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _din(home_dir: Path, *args: str) -> Any:
    home_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "dinet", *args, "--no-mdns", "--home", str(home_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_the_page_switch_makes_the_tab_serve_and_shows_what_it_costs(browser, home):
    page = browser.new_context().new_page()
    page.goto(home.printed["api"])
    page.wait_for_selector("#contribute:not([hidden])")
    assert "smollm2" in page.inner_text("#contribute-cost") and "MiB" in page.inner_text("#contribute-cost")
    page.check("#contribute-switch")
    serving = "() => document.getElementById('contribute-status').textContent.startsWith('Serving')"
    page.wait_for_function(serving, timeout=120_000)
    done = page.inner_text("#contribute-done")
    assert "tok/s measured" in done and "0 requests served" in done, done
    page.uncheck("#contribute-switch")
    page.wait_for_function("() => document.getElementById('contribute-status').textContent === 'Stopped.'")
