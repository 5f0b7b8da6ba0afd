"""A local EVM dev chain with the channels contract deployed: for tests, benches and
`din chain devnet`.

The chain is ganache 7.9.2 (npm), run as a child process on 127.0.0.1. Why ganache:
it is a real JSON-RPC node (the same web3 calls as against a public chain, real gas
accounting, revert reasons), starts in about a second, mines each transaction at once and
can move its clock (`evm_increaseTime`), which channel timeouts need. eth-tester/py-evm
would run in-process but is not a JSON-RPC server other processes (nodes, clients) can
share; hardhat and anvil need a project or a Rust toolchain. The Makefile installs it into
`<venv>/share/dinet/ganache` (`make ganache`); `DINET_GANACHE` names another binary.

The funded accounts are deterministic dev keys (keccak256 of "dinet devnet <i>"):
public knowledge, never to hold real value.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from requests.exceptions import RequestException
from web3 import Web3

from dinet.errors import ChainError
from dinet.settle._eth import keccak256
from dinet.settle.chain import deploy_channels
from dinet.settle.keys import ChainKey

logger = logging.getLogger(__name__)

GANACHE_ENV = "DINET_GANACHE"
GANACHE = Path(sys.prefix) / "share" / "dinet" / "ganache" / "node_modules" / ".bin" / "ganache"
CHAIN_ID = 1337
ACCOUNT_BALANCE = 10_000 * 10**18  # wei: 10,000 ETH each
_START_TIMEOUT_S = 60.0


def dev_key(index: int) -> ChainKey:
    """The devnet's funded account number `index`: the same on every machine."""
    return ChainKey(keccak256(f"dinet devnet {index}".encode()))


def ganache_path() -> Path:
    configured = os.environ.get(GANACHE_ENV)
    if configured:
        return Path(configured)
    if GANACHE.exists():
        return GANACHE
    found = shutil.which("ganache")
    if found:
        return Path(found)
    raise ChainError(f"ganache is not installed at {GANACHE}: install it with `make ganache`", "devnet")


class Devnet:
    """A ganache chain on 127.0.0.1 with funded `accounts` and the channels contract
    (deployed by accounts[0]) at `contract`. Use as a context manager: it starts on entry
    and the process is killed on exit."""

    def __init__(self, port: int = 0, accounts: int = 10) -> None:
        self.port = port or _free_port()
        self.rpc_url = f"http://127.0.0.1:{self.port}"
        self.accounts = [dev_key(i) for i in range(accounts)]
        self.chain_id = CHAIN_ID
        self.contract = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Devnet:
        command = [
            str(ganache_path()),
            "--server.host=127.0.0.1",
            f"--server.port={self.port}",
            f"--chain.chainId={CHAIN_ID}",
            "--chain.hardfork=shanghai",
            "--logging.quiet",
            *(f"--wallet.accounts={key.hex},{ACCOUNT_BALANCE}" for key in self.accounts),
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            self._wait_until_up()
            self.contract = deploy_channels(self.rpc_url, self.accounts[0])
        except BaseException:
            self.stop()
            raise
        logger.info("devnet at %s, channels contract %s", self.rpc_url, self.contract)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def advance(self, seconds: int) -> None:
        """Move the chain's clock `seconds` on and mine a block at the new time."""
        w3 = self.web3()
        w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    def web3(self) -> Web3:
        return Web3(Web3.HTTPProvider(self.rpc_url))

    def __enter__(self) -> Devnet:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_until_up(self) -> None:
        w3 = self.web3()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise ChainError(f"ganache exited ({self._process.returncode}): {stderr.strip()}", "devnet")
            try:
                if w3.eth.chain_id == CHAIN_ID:
                    return
            except RequestException:
                time.sleep(0.1)
        raise ChainError(f"ganache did not answer on {self.rpc_url} in {_START_TIMEOUT_S:.0f} s", "devnet")


def start_devnet(port: int = 0, accounts: int = 10) -> Devnet:
    """A started Devnet (stop it, or use it in a `with` block)."""
    return Devnet(port, accounts).start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
