"""`din chain devnet`: a chain other processes can use, until SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from dinet.settle.chain import Channels
from dinet.settle.keys import ChainKey, load_or_create_chain_key


def test_din_chain_devnet_serves_a_chain_with_the_contract_until_sigterm():
    with subprocess.Popen(
        [sys.executable, "-m", "dinet", "chain", "devnet", "--json", "--accounts", "3"],
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        assert info["chain_id"] == 1337 and info["dev_keys"] and len(info["accounts"]) == 3
        chain = Channels(info["rpc_url"], info["contract"])
        assert chain.domain.chain_id == 1337
        assert chain.balance(info["accounts"][1]["address"]) == 10_000 * 10**18
        assert chain._account.w3.eth.get_code(info["contract"])  # the contract is deployed
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_din_chain_key_shows_and_imports_the_homes_account(tmp_path):
    dev = "0x" + "11" * 32
    run = [sys.executable, "-m", "dinet", "chain", "key", "--home", str(tmp_path), "--json"]
    made = json.loads(subprocess.run(run, capture_output=True, text=True, check=True, timeout=60).stdout)
    imported = subprocess.run([*run, "--import", dev], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(imported.stdout)["address"] == ChainKey.from_hex(dev).address != made["address"]
    bad = subprocess.run([*run, "--import", "0x12"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "64 hex digits" in bad.stderr
    assert load_or_create_chain_key(tmp_path) == ChainKey.from_hex(dev)  # the bad one changed nothing
