"""The channels contract on a chain, through web3.py: open, top up, claim, close, reclaim.

Synchronous and blocking (one JSON-RPC round trip per call, a transaction waits for its
receipt): the node and client call it with `trio.to_thread.run_sync`. Every transaction
is estimated first, so one the contract would refuse fails before it is sent, with the
contract's revert reason in a `ChainError` ("stale voucher", "not expired" ...) and no
gas spent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_typing import ChecksumAddress, HexAddress, HexStr
from requests.exceptions import RequestException
from web3 import Web3
from web3.contract.contract import Contract, ContractFunction
from web3.exceptions import ContractLogicError, Web3Exception
from web3.logs import DISCARD
from web3.types import TxParams, TxReceipt

from dinet.errors import BadVoucher, ChainError
from dinet.settle._contracts import abi, bytecode
from dinet.settle._eth import ZERO_ADDRESS, to_address
from dinet.settle.keys import ChainKey
from dinet.settle.voucher import ChannelDomain, Voucher

logger = logging.getLogger(__name__)

_RECEIPT_TIMEOUT_S = 120.0
_RPC_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ChannelState:
    """One channel as the contract holds it."""

    channel: str
    sender: str
    payee: str
    token: str  # ZERO_ADDRESS for ETH
    deposit: int
    paid: int  # the highest voucher amount claimed so far
    expires_at: int  # unix seconds, compared with the block's timestamp
    closed: bool

    def holds(self, token: str | None) -> bool:
        """Whether the deposit is in `token` (an ERC-20's address; None: ETH)."""
        return to_address(self.token) == to_address(token or ZERO_ADDRESS)


class _Account:
    """A web3 connection and the key that signs its transactions."""

    def __init__(self, rpc_url: str, key: ChainKey | None) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": _RPC_TIMEOUT_S}))
        self.key = key
        self.chain_id: int = _rpc(lambda: self.w3.eth.chain_id, f"reach {rpc_url}")
        self.receipts: list[TxReceipt] = []  # of the last public call

    def transact(self, call: ContractFunction | Any, action: str, value: int = 0) -> TxReceipt:
        """Estimate, sign, send and wait for one transaction; ChainError if it reverts."""
        key = self._signer(action)
        params: TxParams = {"from": key.address, "value": Web3.to_wei(value, "wei"), "chainId": self.chain_id}
        tx = _rpc(lambda: call.build_transaction(params), action)  # estimates gas: reverts here
        return self._send(tx, action)

    def send_value(self, to: str, amount: int, action: str) -> TxReceipt:
        """A plain ETH transfer."""
        key = self._signer(action)
        tx: TxParams = {
            "from": key.address,
            "to": to,
            "value": Web3.to_wei(amount, "wei"),
            "chainId": self.chain_id,
        }
        tx["gas"] = _rpc(lambda: self.w3.eth.estimate_gas(tx), action)
        tx["gasPrice"] = _rpc(lambda: self.w3.eth.gas_price, action)
        return self._send(tx, action)

    def _signer(self, action: str) -> ChainKey:
        if self.key is None:
            raise ChainError("no chain key to sign with", action)
        return self.key

    def _send(self, tx: TxParams, action: str) -> TxReceipt:
        sender = self._signer(action).address
        tx["nonce"] = _rpc(lambda: self.w3.eth.get_transaction_count(_checksum(sender), "pending"), action)
        signed = self.w3.eth.account.sign_transaction(tx, self._signer(action).private_key)
        tx_hash = _rpc(lambda: self.w3.eth.send_raw_transaction(signed.raw_transaction), action)
        receipt: TxReceipt = _rpc(
            lambda: self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=_RECEIPT_TIMEOUT_S), action
        )
        self.receipts.append(receipt)
        if receipt["status"] != 1:
            raise ChainError(f"transaction {tx_hash.hex()} reverted", action)
        logger.debug("%s: gas %d in block %d", action, receipt["gasUsed"], receipt["blockNumber"])
        return receipt


class Channels:
    """Payment channels on the contract at `contract`, acting as `key` (a sender or a
    payee; a read-only view without one)."""

    def __init__(self, rpc_url: str, contract: str, key: ChainKey | None = None) -> None:
        self._account = _Account(rpc_url, key)
        self.key = key
        self.contract = to_address(contract)
        self._contract: Contract = self._account.w3.eth.contract(
            address=_checksum(self.contract), abi=abi("channels")
        )
        self.domain = ChannelDomain(chain_id=self._account.chain_id, contract=self.contract)

    @property
    def last_gas(self) -> int:
        """Gas used by the last transaction sent (0 before any)."""
        receipts = self._account.receipts
        return int(receipts[-1]["gasUsed"]) if receipts else 0

    @property
    def last_receipts(self) -> list[TxReceipt]:
        """The receipts of the last call's transactions (an ERC-20 open or top-up is two:
        approve, then the call); what each cost is gasUsed * effectiveGasPrice."""
        return list(self._account.receipts)

    def open(self, payee: str, deposit: int, timeout_s: int, token: str | None = None) -> str:
        """Open a channel to `payee` with `deposit` (in wei, or the token's smallest unit),
        refundable to us `timeout_s` seconds from now; returns its id (0x + 64 hex)."""
        self._account.receipts = []
        token = to_address(token) if token else ZERO_ADDRESS
        self._approve(token, deposit, "open")
        call = self._contract.functions.open(to_address(payee), token, deposit, timeout_s)
        value = deposit if token == ZERO_ADDRESS else 0
        receipt = self._account.transact(call, "open", value=value)
        (opened,) = self._contract.events.Opened().process_receipt(receipt, errors=DISCARD)
        return "0x" + bytes(opened["args"]["channel"]).hex()

    def top_up(self, channel: str, amount: int, extend_s: int = 0) -> None:
        """Add `amount` to the deposit (sender only); with `extend_s` the channel also stays
        open at least that many seconds from now."""
        self._account.receipts = []
        token = self.state(channel).token
        self._approve(token, amount, "top_up")
        call = self._contract.functions.top_up(_bytes32(channel), amount, extend_s)
        self._account.transact(call, "top_up", value=amount if token == ZERO_ADDRESS else 0)

    def claim(self, voucher: Voucher) -> int:
        """Payee: collect what `voucher` adds over what was paid; returns the wei paid now.
        ChainError "stale voucher" if it adds nothing, "over deposit", "bad signature"."""
        self._account.receipts = []
        call = self._contract.functions.claim(_bytes32(voucher.channel), voucher.amount, *_vrs(voucher))
        receipt = self._account.transact(call, "claim")
        return sum(
            int(e["args"]["paid_now"])
            for e in self._contract.events.Claimed().process_receipt(receipt, errors=DISCARD)
        )

    def close(self, voucher: Voucher | None, channel: str | None = None) -> int:
        """Payee: claim with `voucher` if it is higher than what was paid, refund the rest
        to the sender and close the channel. Returns the wei paid to us by this close (0
        with a stale voucher or none; then give `channel`)."""
        self._account.receipts = []
        if voucher is None:
            if channel is None:
                raise ValueError("close without a voucher needs the channel id")
            args: tuple[bytes, int, int, bytes, bytes] = (_bytes32(channel), 0, 0, bytes(32), bytes(32))
        else:
            args = (_bytes32(voucher.channel), voucher.amount, *_vrs(voucher))
        receipt = self._account.transact(self._contract.functions.close(*args), "close")
        return sum(
            int(e["args"]["paid_now"])
            for e in self._contract.events.Claimed().process_receipt(receipt, errors=DISCARD)
        )

    def reclaim(self, channel: str) -> int:
        """Sender, once the channel has expired: take back what was not paid and close it;
        returns the wei refunded. ChainError "not expired" before expires_at."""
        self._account.receipts = []
        receipt = self._account.transact(self._contract.functions.reclaim(_bytes32(channel)), "reclaim")
        (reclaimed,) = self._contract.events.Reclaimed().process_receipt(receipt, errors=DISCARD)
        return int(reclaimed["args"]["refunded"])

    def state(self, channel: str) -> ChannelState:
        """The channel's current state; ChainError "no such channel" if none has the id."""
        fields = _rpc(lambda: self._contract.functions.channels(_bytes32(channel)).call(), "state")
        sender, payee, token, deposit, paid, expires_at, closed = fields
        if int(sender, 16) == 0:
            raise ChainError(f"no such channel {channel}", "state")
        return ChannelState(
            channel=channel.lower(),
            sender=sender,
            payee=payee,
            token=token,
            deposit=deposit,
            paid=paid,
            expires_at=expires_at,
            closed=closed,
        )

    def balance(self, address: str, token: str | None = None) -> int:
        """`address`'s ETH (wei), or its balance of the ERC-20 `token`."""
        if not token or to_address(token) == ZERO_ADDRESS:
            return int(_rpc(lambda: self._account.w3.eth.get_balance(_checksum(address)), "balance"))
        erc20 = self._account.w3.eth.contract(address=_checksum(token), abi=abi("test_token"))
        return int(_rpc(lambda: erc20.functions.balanceOf(to_address(address)).call(), "balance"))

    def transfer(self, to: str, amount: int, token: str | None = None) -> None:
        """Send `amount` of ETH (wei) or of the ERC-20 `token` from our account to `to`."""
        self._account.receipts = []
        if not token or to_address(token) == ZERO_ADDRESS:
            self._account.send_value(to_address(to), amount, "transfer")
            return
        erc20 = self._account.w3.eth.contract(address=_checksum(token), abi=abi("test_token"))
        self._account.transact(erc20.functions.transfer(to_address(to), amount), "transfer")

    def _approve(self, token: str, amount: int, action: str) -> None:
        """Let the contract pull `amount` of `token` from us (nothing to do for ETH)."""
        if token == ZERO_ADDRESS or amount == 0 or self.key is None:
            return
        erc20 = self._account.w3.eth.contract(address=_checksum(token), abi=abi("test_token"))
        allowed = _rpc(lambda: erc20.functions.allowance(self.key.address, self.contract).call(), action)
        if allowed < amount:
            self._account.transact(erc20.functions.approve(self.contract, amount), f"{action} (approve)")


def deploy_channels(rpc_url: str, key: ChainKey) -> str:
    """Deploy contracts/channels.vy; returns its address."""
    return _deploy(rpc_url, key, "channels")


def deploy_test_token(rpc_url: str, key: ChainKey, supply: int) -> str:
    """Deploy contracts/test_token.vy (a minimal ERC-20, for tests and the devnet) with
    its whole `supply` held by `key`; returns its address."""
    return _deploy(rpc_url, key, "test_token", supply)


def _deploy(rpc_url: str, key: ChainKey, name: str, *args: int) -> str:
    account = _Account(rpc_url, key)
    factory = account.w3.eth.contract(abi=abi(name), bytecode=bytecode(name))
    receipt = account.transact(factory.constructor(*args), f"deploy {name}")
    return to_address(str(receipt["contractAddress"]))


def _checksum(address: str) -> ChecksumAddress:
    return ChecksumAddress(HexAddress(HexStr(to_address(address))))


def _bytes32(channel: str) -> bytes:
    digits = channel[2:] if channel.startswith("0x") else ""
    if len(digits) != 64:
        raise BadVoucher(f"a channel id is 0x and 64 hex digits, not {channel!r}")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise BadVoucher(f"a channel id is 0x and 64 hex digits, not {channel!r}") from None


def _vrs(voucher: Voucher) -> tuple[int, bytes, bytes]:
    """The signature as the contract takes it: v, r, s."""
    raw = voucher.signature[2:] if voucher.signature.startswith("0x") else ""
    if len(raw) != 130:
        raise BadVoucher("a voucher signature is 0x and 130 hex digits (r, s, v)")
    try:
        signature = bytes.fromhex(raw)
    except ValueError:
        raise BadVoucher("a voucher signature is 0x and 130 hex digits (r, s, v)") from None
    return signature[64], signature[:32], signature[32:64]


def _rpc(call: Any, action: str) -> Any:
    """`call()`, with the chain's refusals and unreachable nodes as ChainError."""
    try:
        return call()
    except ContractLogicError as exc:
        raise ChainError(_revert_reason(exc), action) from None
    except (Web3Exception, RequestException, TimeoutError) as exc:
        raise ChainError(str(exc), action) from exc


_ERROR_SELECTOR = "08c379a0"  # Error(string): how Solidity and Vyper encode a revert reason
_REVERT_PREFIXES = ("execution reverted: ", "VM Exception while processing transaction: revert ")


def _revert_reason(exc: ContractLogicError) -> str:
    """The contract's own reason ("stale voucher"), from the revert data where the node
    returned it, else from the node's message without its prefix."""
    data = exc.data if isinstance(exc.data, str) else None
    if data and data.removeprefix("0x").startswith(_ERROR_SELECTOR):
        try:
            (reason,) = abi_decode(["string"], bytes.fromhex(data.removeprefix("0x")[8:]))
            return str(reason)
        except (ValueError, DecodingError):
            pass
    message = str(exc.message or exc)
    for prefix in _REVERT_PREFIXES:
        message = message.removeprefix(prefix)
    return message
