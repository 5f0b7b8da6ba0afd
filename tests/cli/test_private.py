"""`din swarm-key new` and `din peer-id`: what an operator runs to set up a private swarm."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

from dinet.p2p.identity import CLIENT_IDENTITY, load_or_create_identity
from dinet.p2p.pnet import read_swarm_key


def din(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dinet", *args], capture_output=True, text=True, timeout=120)


def test_swarm_key_new_writes_a_private_key_once(tmp_path):
    path = tmp_path / "swarm.key"
    done = din("swarm-key", "new", str(path), "--json")
    assert done.returncode == 0, done.stderr
    key = read_swarm_key(path)
    assert json.loads(done.stdout) == {"path": str(path), "fingerprint": key.fingerprint}
    assert key.secret.hex() not in done.stdout + done.stderr  # the key itself is never printed
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = din("swarm-key", "new", str(path))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert read_swarm_key(path).secret == key.secret


def test_peer_id_shows_the_ids_the_home_will_use(tmp_path):
    done = din("peer-id", "--home", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    ids = json.loads(done.stdout)
    assert ids["client"] == load_or_create_identity(tmp_path, CLIENT_IDENTITY).peer_id
    assert ids["node"] == load_or_create_identity(tmp_path).peer_id != ids["client"]
