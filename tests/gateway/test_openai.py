"""The official `openai` package against a real `din gateway` and the real 3-node mesh."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import httpx
import openai
import pytest
from _gateway_helpers import API_KEY, start_gateway, wait_for_peers

from dinet.node.local_mesh import start_node

MODEL = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "Name three colours."}]
REACH_STATES = ("public", "private", "unknown")
EMBED_MODEL = "all-minilm-l6-v2"  # what two nodes of the mesh serve beside MODEL


def test_models_lists_what_the_network_offers(client, mesh):
    listed = client.models.list().data
    assert {m.id: (m.model_extra or {})["task"] for m in listed} == {MODEL: "generate", EMBED_MODEL: "embed"}
    models = [m for m in listed if m.id == MODEL]
    extra = models[0].model_extra or {}
    assert 1 <= extra["peers"] <= len(mesh.nodes)
    assert mesh.nodes[0].model_hash in extra["model_hashes"]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_answer_names_its_peer_and_usage(client, mesh):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, max_tokens=24, temperature=0
    )
    reply = raw.parse()
    text = reply.choices[0].message.content
    assert text and text.strip()
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 24
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    peer = (reply.model_extra or {})["dinet"]["peer_id"]
    assert peer in {n.peer_id for n in mesh.nodes}
    assert raw.headers["x-dinet-peer"] == peer


def test_streamed_chat_gives_the_same_greedy_text(client, mesh):
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=32, temperature=0)
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=32,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-dinet-peer"] in {n.peer_id for n in mesh.nodes}
        chunks = list(response.parse())
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1, "the answer should arrive in several chunks"
    assert "".join(pieces) == whole.choices[0].message.content
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == [whole.choices[0].finish_reason]
    assert (finishing[0].model_extra or {})["dinet"]["peer_id"] in {n.peer_id for n in mesh.nodes}
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_streamed_and_not(client):
    whole = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert "Paris" in whole.choices[0].text
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 8
    streamed = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


def test_stop_sequence_ends_the_answer(client):
    reply = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=40, temperature=0, stop=[" 8"]
    )
    assert reply.choices[0].finish_reason == "stop"
    assert " 8" not in reply.choices[0].text
    assert "7" in reply.choices[0].text


def test_seeded_sampling_is_reproducible(client):
    def sample() -> str:
        reply = client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=16, temperature=0.9, top_p=0.95, seed=1234
        )
        return reply.choices[0].message.content or ""

    assert sample() == sample()


def test_errors_are_openai_exceptions_of_the_right_class(client, gateway):
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(model=MODEL, messages=HELLO, temperature=5)
    assert hot.value.param == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=HELLO, n=9)  # above the limit of 8
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100_000)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]
        )
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=["one", "two"])
    wrong = openai.OpenAI(base_url=gateway.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=MODEL, messages=HELLO)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    garbage = httpx.post(
        f"{gateway.base_url}/chat/completions",
        content=b"{not json",
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    assert garbage.status_code == 400
    assert garbage.json()["error"]["type"] == "invalid_request_error"


def test_a_client_leaving_mid_stream_does_not_disturb_the_next(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=200, temperature=0, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert reply.usage.completion_tokens > 0


def test_metrics_count_requests_tokens_latency_and_errors(client, gateway):
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert httpx.get(f"{gateway.url}/metrics").status_code == 401
    text = httpx.get(f"{gateway.url}/metrics", headers={"authorization": f"Bearer {API_KEY}"}).text
    values = _samples(text)
    assert values['dinet_gateway_requests_total{endpoint="chat",status="200"}'] >= 1
    assert values['dinet_gateway_requests_total{endpoint="chat",status="404"}'] >= 1
    assert values['dinet_gateway_errors_total{kind="model_not_found"}'] >= 1
    assert values['dinet_gateway_tokens_total{kind="completion"}'] >= 8
    assert values['dinet_gateway_tokens_total{kind="prompt"}'] >= 1
    assert values["dinet_gateway_time_to_first_token_seconds_count"] >= 1
    assert values["dinet_gateway_time_per_output_token_seconds_count"] >= 1
    assert values["dinet_gateway_peers_known"] >= 1
    assert "dinet_node_reachability" not in text  # a gateway on its own runs beside no node


def test_the_last_hour_series_counts_requests_errors_tokens_and_first_token_times(client, gateway):
    auth = {"authorization": f"Bearer {API_KEY}"}
    before = httpx.get(f"{gateway.url}/api/network/series", headers=auth).json()["totals"]
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    series = httpx.get(f"{gateway.url}/api/network/series", headers=auth).json()
    after = series["totals"]
    assert after["requests"] - before["requests"] == 2  # the page's own polls are not counted
    assert after["errors"] - before["errors"] == 1
    assert after["tokens"] - before["tokens"] >= 2
    assert after["ttft_p50_ms"] > 0
    assert len(series["requests"]) == 360 and series["bucket_s"] == 10
    assert series["tokens_per_s"][-1] > 0 or series["tokens_per_s"][-2] > 0


def test_the_summary_groups_peers_and_the_list_filters_by_group(gateway, mesh):
    peers = wait_for_peers(gateway, len(mesh.nodes))
    auth = {"authorization": f"Bearer {API_KEY}"}
    summary = httpx.get(f"{gateway.url}/api/network/summary", headers=auth).json()
    assert summary["peers"] == len(peers) and summary["links"]["direct"] == len(mesh.nodes)
    group = next(g for g in summary["groups"] if g["model"] == MODEL)
    assert group["peers"] == sum(any(m["model_id"] == MODEL for m in p["models"]) for p in peers)
    rows = httpx.get(
        f"{gateway.url}/api/network",
        params={"region": group["region"], "model": MODEL, "limit": 1},
        headers=auth,
    ).json()
    assert rows["total"] == group["peers"] and len(rows["peers"]) == 1
    bad = httpx.get(f"{gateway.url}/api/network", params={"limit": "-1"}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"


def test_peers_show_how_the_gateway_reaches_them_in_the_api_and_metrics(gateway, mesh):
    """On loopback every peer is reached directly; each says what it found out about itself."""
    peers = wait_for_peers(gateway, len(mesh.nodes))
    assert {p["peer_id"]: p["link"] for p in peers} == {n.peer_id: "direct" for n in mesh.nodes}
    assert all(p["reach"] in REACH_STATES for p in peers)
    text = httpx.get(f"{gateway.url}/metrics", headers={"authorization": f"Bearer {API_KEY}"}).text
    values = _samples(text)
    assert values['dinet_gateway_peer_links{link="direct"}'] == len(mesh.nodes)
    assert values['dinet_gateway_peer_links{link="relayed"}'] == 0
    assert {"punch_attempts", "punch_successes", "reservations_held"} <= {
        name.split('"')[1] for name in values if name.startswith("dinet_reach{")
    }


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_no_peer_at_all_is_a_503(tmp_path):
    lonely = start_gateway(tmp_path / "lonely", ["--timeout", "1"])
    try:
        client = openai.OpenAI(base_url=lonely.base_url, api_key="unused", max_retries=0)
        assert client.models.list().data == []
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model=MODEL, messages=HELLO)
        assert refused.value.status_code == 503
        assert isinstance(refused.value, openai.InternalServerError)
    finally:
        lonely.stop()


def test_refuses_to_listen_beyond_loopback_without_a_key(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dinet",
            "gateway",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--no-mdns",
            "--home",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "DINET_API_KEY"},
    )
    assert result.returncode == 1
    assert "without an API key" in result.stderr


def test_node_serves_the_api_itself(tmp_path):
    port = _free_port()
    node = start_node(tmp_path / "node", extra_args=["--api-port", str(port)])
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        assert client.models.list().data[0].id == MODEL
        reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0)
        assert (reply.model_extra or {})["dinet"]["peer_id"] == node.peer_id
        # Beside a node, the metrics and the page say how reachable the node is: one state
        # at 1, the same the node's own file says.
        values = _samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        states = {s: values[f'dinet_node_reachability{{state="{s}"}}'] for s in REACH_STATES}
        assert sorted(states.values()) == [0.0, 0.0, 1.0]
        network = httpx.get(f"http://127.0.0.1:{port}/api/network").json()
        said = network["gateway"]["node_reachability"]["state"]
        assert states[said] == 1.0
        assert said == json.loads((node.home / "node.json").read_text())["reachability"]["state"]
    finally:
        node.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
