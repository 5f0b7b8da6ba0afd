# pragma version 0.4.3
# pragma evm-version shanghai
"""
@title dinet payment channels
@notice Unidirectional payment channels, sender (a client) -> payee (a node), holding a
        deposit in ETH or in one ERC-20 token.

    The sender pays off-chain with vouchers: EIP-712 signatures over
    Voucher(bytes32 channel, uint256 amount) in the domain
    EIP712Domain(name "dinet channels", version "1", chainId, verifyingContract = this
    contract). `amount` is cumulative: the total owed on the channel so far, in the
    token's smallest unit (wei for ETH), so only the highest voucher matters and the
    payee keeps just the last one.

    State machine of one channel (id = keccak256(this, sender, payee, counter)):

        (none) --open--> OPEN --claim------> OPEN      paid rises to the voucher's amount
                          |  --top_up-----> OPEN      deposit rises; expiry may move later
                          |  --close------> CLOSED    payee: claim if higher, refund the rest
                          |  --reclaim----> CLOSED    sender, once block.timestamp >= expires_at
        CLOSED: every call reverts "channel closed"; the record stays, so an id is never reused.

    Invariants: paid <= deposit; paid never decreases; the payee receives exactly `paid`
    and the sender gets back exactly `deposit - paid`, once, when the channel closes.
    A claim reverts with "stale voucher" unless amount > paid (so a replayed or lowered
    voucher pays nothing), with "over deposit" if amount > deposit, and with "bad
    signature" unless the sender signed this channel's voucher (low-s form, v 27 or 28).
    A close with a voucher no higher than `paid` pays nothing more: the highest claim
    stands. Only the payee may claim or close; only the sender may top up or reclaim, and
    reclaim reverts "not expired" before expires_at. The payee should therefore claim or
    close before expires_at: after it the sender may take the remainder back.
"""

from ethereum.ercs import IERC20

struct Channel:
    sender: address
    payee: address
    token: address  # empty(address): ETH
    deposit: uint256
    paid: uint256
    expires_at: uint256  # unix seconds, compared with block.timestamp
    closed: bool


event Opened:
    channel: indexed(bytes32)
    sender: indexed(address)
    payee: indexed(address)
    token: address
    deposit: uint256
    expires_at: uint256


event ToppedUp:
    channel: indexed(bytes32)
    amount: uint256
    deposit: uint256
    expires_at: uint256


event Claimed:
    channel: indexed(bytes32)
    amount: uint256  # the voucher's cumulative amount, now `paid`
    paid_now: uint256


event Closed:
    channel: indexed(bytes32)
    paid: uint256
    refunded: uint256


event Reclaimed:
    channel: indexed(bytes32)
    refunded: uint256


channels: public(HashMap[bytes32, Channel])
opened: public(uint256)  # channels opened so far: the counter in every id

DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
VOUCHER_TYPEHASH: constant(bytes32) = keccak256("Voucher(bytes32 channel,uint256 amount)")
NAME_HASH: constant(bytes32) = keccak256("dinet channels")
VERSION_HASH: constant(bytes32) = keccak256("1")
# secp256k1's group order / 2: a signature with a higher s is the malleable twin of one below.
HALF_N: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168
MAX_TIMEOUT: constant(uint256) = 10 * 365 * 86400


@external
@payable
@nonreentrant
def open(payee: address, token: address, deposit: uint256, timeout: uint256) -> bytes32:
    """Open a channel to `payee` holding `deposit` (sent as value for ETH, else pulled with
    transferFrom after an approve), which the sender may reclaim `timeout` seconds on."""
    assert payee != empty(address) and payee != msg.sender, "bad payee"
    assert timeout <= MAX_TIMEOUT, "timeout too long"
    channel: bytes32 = keccak256(abi_encode(self, msg.sender, payee, self.opened))
    self.opened += 1
    expires_at: uint256 = block.timestamp + timeout
    self.channels[channel] = Channel(
        sender=msg.sender,
        payee=payee,
        token=token,
        deposit=deposit,
        paid=0,
        expires_at=expires_at,
        closed=False,
    )
    self._take(token, deposit, msg.value)
    log Opened(channel=channel, sender=msg.sender, payee=payee, token=token, deposit=deposit, expires_at=expires_at)
    return channel


@external
@payable
@nonreentrant
def top_up(channel: bytes32, amount: uint256, extend: uint256):
    """Add `amount` to the deposit (sender only); with `extend` > 0 the channel also stays
    open until at least `extend` seconds from now."""
    c: Channel = self._live(channel)
    assert msg.sender == c.sender, "not sender"
    assert extend <= MAX_TIMEOUT, "timeout too long"
    c.deposit += amount
    c.expires_at = max(c.expires_at, block.timestamp + extend)
    self.channels[channel] = c
    self._take(c.token, amount, msg.value)
    log ToppedUp(channel=channel, amount=amount, deposit=c.deposit, expires_at=c.expires_at)


@external
@nonreentrant
def claim(channel: bytes32, amount: uint256, v: uint8, r: bytes32, s: bytes32) -> uint256:
    """Payee: collect `amount - paid` with the sender's voucher for `amount`; returns it."""
    c: Channel = self._live(channel)
    assert msg.sender == c.payee, "not payee"
    return self._claim(channel, c, amount, v, r, s)


@external
@nonreentrant
def close(channel: bytes32, amount: uint256, v: uint8, r: bytes32, s: bytes32) -> uint256:
    """Payee: claim with the voucher if it is higher than `paid` (a lower one, or amount 0
    with no signature, pays nothing more), then refund the rest to the sender and close."""
    c: Channel = self._live(channel)
    assert msg.sender == c.payee, "not payee"
    if amount > c.paid:
        self._claim(channel, c, amount, v, r, s)
        c = self.channels[channel]
    refund: uint256 = c.deposit - c.paid
    self.channels[channel].closed = True
    self._pay(c.token, c.sender, refund)
    log Closed(channel=channel, paid=c.paid, refunded=refund)
    return refund


@external
@nonreentrant
def reclaim(channel: bytes32) -> uint256:
    """Sender, once the channel has expired: take back `deposit - paid` and close it."""
    c: Channel = self._live(channel)
    assert msg.sender == c.sender, "not sender"
    assert block.timestamp >= c.expires_at, "not expired"
    refund: uint256 = c.deposit - c.paid
    self.channels[channel].closed = True
    self._pay(c.token, c.sender, refund)
    log Reclaimed(channel=channel, refunded=refund)
    return refund


@view
@external
def voucher_digest(channel: bytes32, amount: uint256) -> bytes32:
    """The EIP-712 digest the sender signs for a voucher (for clients that cannot hash)."""
    return self._digest(channel, amount)


@view
@internal
def _digest(channel: bytes32, amount: uint256) -> bytes32:
    domain: bytes32 = keccak256(abi_encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, chain.id, self))
    voucher: bytes32 = keccak256(abi_encode(VOUCHER_TYPEHASH, channel, amount))
    return keccak256(concat(b"\x19\x01", domain, voucher))


@view
@internal
def _live(channel: bytes32) -> Channel:
    c: Channel = self.channels[channel]
    assert c.sender != empty(address), "no such channel"
    assert not c.closed, "channel closed"
    return c


@internal
def _claim(channel: bytes32, c: Channel, amount: uint256, v: uint8, r: bytes32, s: bytes32) -> uint256:
    assert convert(s, uint256) <= HALF_N, "bad signature"
    assert v == 27 or v == 28, "bad signature"
    signer: address = ecrecover(self._digest(channel, amount), v, r, s)
    assert signer != empty(address) and signer == c.sender, "bad signature"
    assert amount <= c.deposit, "over deposit"
    assert amount > c.paid, "stale voucher"
    paid_now: uint256 = amount - c.paid
    self.channels[channel].paid = amount
    self._pay(c.token, c.payee, paid_now)
    log Claimed(channel=channel, amount=amount, paid_now=paid_now)
    return paid_now


@internal
def _take(token: address, amount: uint256, sent: uint256):
    if token == empty(address):
        assert sent == amount, "value is not the amount"
    else:
        assert sent == 0, "ETH sent to a token channel"
        if amount > 0:
            assert extcall IERC20(token).transferFrom(msg.sender, self, amount, default_return_value=True), "transfer failed"


@internal
def _pay(token: address, to: address, amount: uint256):
    if amount == 0:
        return
    if token == empty(address):
        raw_call(to, b"", value=amount)
    else:
        assert extcall IERC20(token).transfer(to, amount, default_return_value=True), "transfer failed"
