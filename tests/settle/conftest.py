"""Fixtures for the payment-channel tests, on the session's `devnet` (tests/conftest.py).

Accounts: 0 deployed the contract and the test token, 1 is the client (the sender),
2 and 3 are two nodes (payees), 4 signs forged vouchers. Tests share the chain, so each
opens its own channel and compares balances before and after.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dinet.settle import ChainKey
from dinet.settle.chain import Channels, deploy_test_token
from dinet.settle.devnet import Devnet

TOKEN_SUPPLY = 10**24


@dataclass
class Parties:
    devnet: Devnet
    client: Channels  # the sender, account 1
    node: Channels  # payee, account 2
    other_node: Channels  # another payee, account 3
    forger: ChainKey  # account 4

    @property
    def client_key(self) -> ChainKey:
        assert self.client.key is not None
        return self.client.key


@pytest.fixture(scope="module")
def parties(devnet: Devnet) -> Parties:
    def channels(i: int) -> Channels:
        return Channels(devnet.rpc_url, devnet.contract, devnet.accounts[i])

    return Parties(devnet, channels(1), channels(2), channels(3), devnet.accounts[4])


@pytest.fixture(scope="module")
def token(devnet: Devnet, parties: Parties) -> str:
    """A test ERC-20 deployed by account 0, half of it given to the client."""
    address = deploy_test_token(devnet.rpc_url, devnet.accounts[0], TOKEN_SUPPLY)
    deployer = Channels(devnet.rpc_url, devnet.contract, devnet.accounts[0])
    deployer.transfer(parties.client_key.address, TOKEN_SUPPLY // 2, token=address)
    return address
