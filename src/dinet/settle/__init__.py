"""Settlement: unidirectional payment channels on an EVM chain (issue 24, the on-chain half).

    keys     ChainKey, load_or_create_chain_key: the secp256k1 account a client pays from
    voucher  ChannelDomain, Voucher, sign_voucher, voucher_signer, wei_of: EIP-712 vouchers,
             pure and fast (one per request)
    chain    Channels, ChannelState, deploy_channels, deploy_test_token: the contract
             (contracts/channels.vy) through web3.py, synchronous (call it from a thread)
    devnet   Devnet, start_devnet: a local ganache chain with the contract deployed

No libp2p here: the node and client carry vouchers in their own messages.
"""

from dinet.settle.keys import ChainKey, load_or_create_chain_key
from dinet.settle.voucher import ChannelDomain, Voucher, sign_voucher, voucher_digest, voucher_signer, wei_of

__all__ = [
    "ChainKey",
    "ChannelDomain",
    "Voucher",
    "load_or_create_chain_key",
    "sign_voucher",
    "voucher_digest",
    "voucher_signer",
    "wei_of",
]
