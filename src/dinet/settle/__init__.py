"""Settlement: unidirectional payment channels on an EVM chain (issue 24, the on-chain half).

    keys     ChainKey, load_or_create_chain_key: the secp256k1 account a client pays from
    voucher  ChannelDomain, Voucher, sign_voucher, voucher_signer, wei_of: EIP-712 vouchers,
             pure and fast (one per request)
    chain    Channels, ChannelState, deploy_channels, deploy_test_token: the contract
             (contracts/channels.vy) through web3.py, synchronous (call it from a thread);
             `channels_at` here opens it without importing web3 before it is needed
    devnet   Devnet, start_devnet: a local ganache chain with the contract deployed

No libp2p here: the node and client carry vouchers in their own messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dinet.settle.keys import ChainKey, load_or_create_chain_key
from dinet.settle.voucher import ChannelDomain, Voucher, sign_voucher, voucher_digest, voucher_signer, wei_of

if TYPE_CHECKING:
    from dinet.settle.chain import Channels

__all__ = [
    "ChainKey",
    "ChannelDomain",
    "Voucher",
    "channels_at",
    "load_or_create_chain_key",
    "sign_voucher",
    "voucher_digest",
    "voucher_signer",
    "wei_of",
]


def channels_at(rpc_url: str, contract: str, home: Path) -> Channels:
    """The channels contract at `contract` on the chain at `rpc_url`, used with the
    account kept in `home`. web3 is imported here, not with this package: it takes about a
    second, which every `din` command and node start would otherwise pay."""
    from dinet.settle.chain import Channels

    return Channels(rpc_url, contract, load_or_create_chain_key(home))
