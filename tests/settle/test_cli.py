"""`din chain devnet`: a chain other processes can use, until SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from dinet.settle.chain import Channels


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
