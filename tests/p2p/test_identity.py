import stat

from dinet.node.local_mesh import start_node
from dinet.p2p.identity import NODE_IDENTITY


def test_a_node_keeps_its_peer_id_across_restarts(tmp_path):
    first = start_node(tmp_path / "home")
    first.stop()
    second = start_node(tmp_path / "home")
    second.stop()
    assert first.peer_id == second.peer_id
    key_file = tmp_path / "home" / NODE_IDENTITY
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    other = start_node(tmp_path / "elsewhere")
    other.stop()
    assert other.peer_id != first.peer_id


def test_node_json_records_the_running_node(tmp_path):
    import json

    node = start_node(tmp_path / "home")
    try:
        record = json.loads((tmp_path / "home" / "node.json").read_text())
        assert record["peer_id"] == node.peer_id
        assert record["pid"] == node.process.pid
        assert any(a.startswith("/ip4/127.0.0.1/tcp/") and a.endswith(node.peer_id) for a in record["addrs"])
        assert (record["model_id"], record["model_hash"]) == (node.model_id, node.model_hash) != (None, None)
        assert record["engine"]["serving"] is True
        # `din node --json` printed the same record (less the pid), reachability included.
        assert set(node.printed) == set(record) - {"pid"}
        for said in (record["reachability"], node.printed["reachability"]):
            assert set(said) == {"state", "reason", "addrs", "relays"}
            assert said["state"] in ("public", "private", "unknown") and said["reason"]
    finally:
        node.stop()
