"""The ledger: countersigned receipts in SQLite, and balances derived from them alone.

One table holds every receipt exactly as signed (body bytes and both signatures)
beside a few columns copied out of the body for queries. Balances are never
stored: they are sums over receipts, so anyone holding the file can recompute and
audit them (`verify`). WAL mode and one transaction per write mean a crash at any
point leaves either the whole receipt or none of it; the primary key (the hash of
the body) and a unique (node, client, request) triple mean none counts twice.

The methods block: from trio call them with `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dinet.errors import BadReceipt, LedgerCorrupted, LedgerError, ReplayedReceipt
from dinet.sqlite_file import open_versioned
from dinet.wire.ids import PeerId
from dinet.wire.messages import ChannelVoucher
from dinet.wire.receipt import CountersignedReceipt, ReceiptBody, receipt_id, verify_countersigned

LEDGER_FILE = "ledger.sqlite"
SCHEMA_VERSION = 2  # 2: payment channels and their vouchers
PAID_BONUS = 0.1  # standing a peer earns per credit it pays by channel

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    receipt_id        TEXT PRIMARY KEY,           -- sha256 of body
    node              TEXT NOT NULL,
    client            TEXT NOT NULL,
    request_id        TEXT NOT NULL,
    model_hash        TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens INTEGER NOT NULL CHECK (completion_tokens >= 0),
    amount            REAL NOT NULL CHECK (amount >= 0),
    issued_at         REAL NOT NULL,
    body              TEXT NOT NULL,
    node_signature    TEXT NOT NULL,
    client_signature  TEXT NOT NULL,
    recorded_at       REAL NOT NULL,
    UNIQUE (node, client, request_id)
);
CREATE INDEX IF NOT EXISTS receipts_client ON receipts (client);
-- Payment channels this home pays through or is paid through (docs/incentives.md). Amounts
-- in wei are kept as decimal text: they pass SQLite's 64-bit integers.
CREATE TABLE IF NOT EXISTS channels (
    channel        TEXT PRIMARY KEY,              -- its id on the contract
    chain_id       INTEGER NOT NULL,
    contract       TEXT NOT NULL,
    payer          TEXT NOT NULL,                 -- peer ids of the client ...
    payee          TEXT NOT NULL,                 -- ... and of the node
    payee_address  TEXT NOT NULL,
    opened_at      REAL NOT NULL,
    closed         INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS channel_receipts (
    receipt_id     TEXT PRIMARY KEY REFERENCES receipts (receipt_id),
    channel        TEXT NOT NULL,
    wei            TEXT NOT NULL                  -- the receipt's amount at the node's rate
);
CREATE INDEX IF NOT EXISTS channel_receipts_channel ON channel_receipts (channel);
CREATE TABLE IF NOT EXISTS vouchers (             -- the highest voucher of each channel
    channel        TEXT PRIMARY KEY,
    amount         TEXT NOT NULL,
    signature      TEXT NOT NULL,
    recorded_at    REAL NOT NULL
);
"""


@dataclass(frozen=True)
class ChannelPayment:
    """What pays for one receipt: its amount in wei on `channel`, and the voucher that came
    with it (None when the client sent none, or the node refused it)."""

    channel: str
    wei: int
    voucher: ChannelVoucher | None = None


@dataclass(frozen=True)
class ChannelRecord:
    channel: str
    chain_id: int
    contract: str
    payer: PeerId
    payee: PeerId
    payee_address: str
    opened_at: float
    closed: bool = False


@dataclass(frozen=True)
class ChannelTotals:
    owed: int  # wei: the sum of the channel's receipts
    vouched: int  # wei: its highest voucher's amount

    @property
    def unpaid(self) -> int:
        return max(0, self.owed - self.vouched)


@dataclass(frozen=True)
class StoredReceipt:
    receipt: CountersignedReceipt
    body: ReceiptBody
    recorded_at: float


@dataclass(frozen=True)
class PeerAccount:
    """This home's account with one other peer."""

    peer_id: PeerId
    earned: float  # credits this home earned serving the peer
    spent: float  # credits this home spent on the peer's service
    receipts: int

    @property
    def balance(self) -> float:
        return self.earned - self.spent


@dataclass(frozen=True)
class Summary:
    me: tuple[PeerId, ...]
    earned: float
    spent: float
    receipts: int
    peers: tuple[PeerAccount, ...]

    @property
    def balance(self) -> float:
        return self.earned - self.spent


@dataclass
class VerifyReport:
    receipts: int = 0
    earned: float = 0.0
    spent: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Ledger:
    """One SQLite ledger file. Safe to share between threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            # FULL: a committed receipt survives power loss too.
            self._db = open_versioned(path, _SCHEMA, SCHEMA_VERSION, synchronous="FULL")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from None

    @classmethod
    def in_home(cls, home: Path) -> Ledger:
        return cls(home / LEDGER_FILE)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, receipt: CountersignedReceipt, paid: ChannelPayment | None = None) -> ReceiptBody:
        """Check both signatures and store the receipt; BadReceipt or ReplayedReceipt if not.

        With `paid`, the receipt counts against its channel, and the voucher (if any) is
        kept in the same transaction when it is the channel's highest: a crash keeps both
        or neither."""
        return self.record_many([receipt], paid)[0]

    def record_many(
        self, receipts: Iterable[CountersignedReceipt], paid: ChannelPayment | None = None
    ) -> list[ReceiptBody]:
        """Store several receipts in one transaction: all of them, or (on any error) none."""
        checked = [(r, verify_countersigned(r)) for r in receipts]
        if paid is not None and len(checked) != 1:
            raise LedgerError("a channel payment goes with exactly one receipt")
        now = time.time()
        rows = [
            (
                r.receipt_id,
                b.node,
                b.client,
                b.request_id,
                b.model_hash,
                b.prompt_tokens,
                b.completion_tokens,
                b.amount,
                b.issued_at,
                r.body,
                r.node_signature,
                r.client_signature,
                now,
            )
            for r, b in checked
        ]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT INTO receipts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                    if paid is not None:
                        self._add_payment(checked[0][0].receipt_id, paid, now)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError:
                raise ReplayedReceipt(self._replay_reason(checked)) from None
            except sqlite3.DatabaseError as exc:
                raise LedgerError(f"cannot write the ledger {self.path}: {exc}") from None
        return [b for _, b in checked]

    def _add_payment(self, receipt: str, paid: ChannelPayment, now: float) -> None:
        self._db.execute(
            "INSERT INTO channel_receipts VALUES (?,?,?)", (receipt, paid.channel, str(paid.wei))
        )
        voucher = paid.voucher
        if voucher is None:
            return
        row = self._db.execute("SELECT amount FROM vouchers WHERE channel = ?", (voucher.channel,)).fetchone()
        if row is None or int(row[0]) < voucher.amount:  # the highest is the one worth claiming
            self._db.execute(
                "INSERT OR REPLACE INTO vouchers VALUES (?,?,?,?)",
                (voucher.channel, str(voucher.amount), voucher.signature, now),
            )

    # -- payment channels -------------------------------------------------------------------

    def add_channel(self, record: ChannelRecord) -> None:
        with self._lock, self._writing():
            self._db.execute(
                "INSERT OR IGNORE INTO channels VALUES (?,?,?,?,?,?,?,?)",
                (
                    record.channel, record.chain_id, record.contract, record.payer, record.payee,
                    record.payee_address, record.opened_at, int(record.closed),
                ),
            )  # fmt: skip

    def mark_closed(self, channel: str) -> None:
        with self._lock, self._writing():
            self._db.execute("UPDATE channels SET closed = 1 WHERE channel = ?", (channel,))

    def channels(
        self, *, payer: PeerId | None = None, payee: PeerId | None = None, channel: str | None = None
    ) -> list[ChannelRecord]:
        """Channels known to this home, oldest first: those of `payer` / `payee`, or `channel`,
        if named."""
        query = (
            "SELECT * FROM channels WHERE (? IS NULL OR payer = ?) AND (? IS NULL OR payee = ?) "
            "AND (? IS NULL OR channel = ?) ORDER BY opened_at"
        )
        with self._lock:
            rows = self._db.execute(query, (payer, payer, payee, payee, channel, channel)).fetchall()
        return [
            ChannelRecord(
                channel=row[0], chain_id=row[1], contract=row[2], payer=PeerId(row[3]), payee=PeerId(row[4]),
                payee_address=row[5], opened_at=row[6], closed=bool(row[7]),
            )
            for row in rows
        ]  # fmt: skip

    def channel_totals(self, channel: str) -> ChannelTotals:
        with self._lock:
            owed = self._db.execute(
                "SELECT wei FROM channel_receipts WHERE channel = ?", (channel,)
            ).fetchall()
            vouched = self._db.execute("SELECT amount FROM vouchers WHERE channel = ?", (channel,)).fetchone()
        return ChannelTotals(sum(int(w) for (w,) in owed), 0 if vouched is None else int(vouched[0]))

    def voucher(self, channel: str) -> ChannelVoucher | None:
        """The channel's highest voucher."""
        with self._lock:
            row = self._db.execute(
                "SELECT amount, signature FROM vouchers WHERE channel = ?", (channel,)
            ).fetchone()
        return None if row is None else ChannelVoucher(channel=channel, amount=int(row[0]), signature=row[1])

    @contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot write the ledger {self.path}: {exc}") from None

    def _replay_reason(self, checked: list[tuple[CountersignedReceipt, ReceiptBody]]) -> str:
        seen: set[tuple[str, str, str]] = set()
        for r, b in checked:
            key = (b.node, b.client, b.request_id)
            found = self._db.execute(
                "SELECT receipt_id FROM receipts WHERE receipt_id = ? OR "
                "(node = ? AND client = ? AND request_id = ?)",
                (r.receipt_id, *key),
            ).fetchone()
            if found is not None or key in seen:
                same = found is not None and found[0] == r.receipt_id
                what = "this receipt is" if same else "another receipt for this request and node is"
                return f"{what} already counted (request {b.request_id}, node {b.node})"
            seen.add(key)
        return "a receipt is already counted"

    def receipts(self, limit: int | None = None) -> Iterator[StoredReceipt]:
        """Receipts in the order they were recorded (all, or the latest `limit`)."""
        query = "SELECT body, node_signature, client_signature, recorded_at FROM receipts ORDER BY rowid"
        if limit is not None:
            query = (
                "SELECT * FROM (SELECT body, node_signature, client_signature, recorded_at, rowid AS r "
                f"FROM receipts ORDER BY rowid DESC LIMIT {int(limit)}) ORDER BY r"
            )
        with self._lock:
            rows = self._db.execute(query).fetchall()
        for row in rows:
            receipt = CountersignedReceipt(body=row[0], node_signature=row[1], client_signature=row[2])
            try:
                body = ReceiptBody.model_validate_json(row[0])
            except ValueError:
                raise LedgerCorrupted(f"receipt {receipt.receipt_id} has an unreadable body") from None
            yield StoredReceipt(receipt, body, row[3])

    def summary(self, me: Iterable[PeerId]) -> Summary:
        """Earned, spent and per-peer accounts of the identities `me`, from receipts alone."""
        mine = tuple(sorted(set(me)))
        marks = ",".join("?" * len(mine)) or "NULL"
        with self._lock:
            earned = self._db.execute(
                f"SELECT client, SUM(amount), COUNT(*) FROM receipts WHERE node IN ({marks}) GROUP BY client",
                mine,
            ).fetchall()
            spent = self._db.execute(
                f"SELECT node, SUM(amount), COUNT(*) FROM receipts WHERE client IN ({marks}) GROUP BY node",
                mine,
            ).fetchall()
            total = self._db.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]
        accounts: dict[PeerId, list[float]] = {}  # peer ids as the receipts' columns hold them
        for peer, amount, count in earned:
            accounts.setdefault(peer, [0.0, 0.0, 0])[0] += amount
            accounts[peer][2] += count
        for peer, amount, count in spent:
            accounts.setdefault(peer, [0.0, 0.0, 0])[1] += amount
            accounts[peer][2] += count
        peers = tuple(PeerAccount(peer, e, s, int(n)) for peer, (e, s, n) in sorted(accounts.items()))
        return Summary(mine, sum(p.earned for p in peers), sum(p.spent for p in peers), total, peers)

    def standing(self, peer_id: PeerId, me: Iterable[PeerId]) -> float:
        """What `peer_id` has earned from this home minus what it has spent here unpaid, plus
        PAID_BONUS of what it paid by channel: paying earns standing, as serving does."""
        mine = tuple(set(me))
        marks = ",".join("?" * len(mine)) or "NULL"
        paid = "receipt_id IN (SELECT receipt_id FROM channel_receipts)"
        with self._lock:
            served_us = self._served(peer_id, mine)
            used_unpaid, used_paid = self._db.execute(
                f"SELECT COALESCE(SUM(CASE WHEN {paid} THEN 0 ELSE amount END), 0), "
                f"COALESCE(SUM(CASE WHEN {paid} THEN amount ELSE 0 END), 0) "
                f"FROM receipts WHERE client = ? AND node IN ({marks})",
                (peer_id, *mine),
            ).fetchone()
        return float(served_us - used_unpaid + PAID_BONUS * used_paid)

    def clients_of(self, me: Iterable[PeerId]) -> list[PeerId]:
        """The peers that `me` have served."""
        mine = tuple(set(me))
        marks = ",".join("?" * len(mine)) or "NULL"
        with self._lock:
            rows = self._db.execute(
                f"SELECT DISTINCT client FROM receipts WHERE node IN ({marks})", mine
            ).fetchall()
        return [PeerId(client) for (client,) in rows]

    def served(self, peer_id: PeerId, me: Iterable[PeerId]) -> float:
        """Credits `peer_id` has earned serving this home."""
        with self._lock:
            return self._served(peer_id, tuple(set(me)))

    def _served(self, peer_id: PeerId, mine: tuple[PeerId, ...]) -> float:
        marks = ",".join("?" * len(mine)) or "NULL"
        return float(
            self._db.execute(
                f"SELECT COALESCE(SUM(amount), 0) FROM receipts WHERE node = ? AND client IN ({marks})",
                (peer_id, *mine),
            ).fetchone()[0]
        )

    def verify(self, me: Iterable[PeerId] = ()) -> VerifyReport:
        """Re-check the file, every signature, every amount and the sums derived from them."""
        mine = set(me)
        report = VerifyReport()
        with self._lock:
            try:
                integrity = self._db.execute("PRAGMA integrity_check").fetchall()
                rows = self._db.execute(
                    "SELECT receipt_id, node, client, request_id, model_hash, prompt_tokens, "
                    "completion_tokens, amount, issued_at, body, node_signature, client_signature "
                    "FROM receipts ORDER BY rowid"
                ).fetchall()
            except sqlite3.DatabaseError as exc:
                report.problems.append(f"the file cannot be read: {exc}")
                return report
        if integrity != [("ok",)]:
            report.problems.extend(f"sqlite: {row[0]}" for row in integrity)
        for row in rows:
            rid = row[0]
            receipt = CountersignedReceipt(body=row[9], node_signature=row[10], client_signature=row[11])
            try:
                body = verify_countersigned(receipt)
            except BadReceipt as exc:
                report.problems.append(f"receipt {rid}: {exc}")
                continue
            copied = (
                body.node,
                body.client,
                body.request_id,
                body.model_hash,
                body.prompt_tokens,
                body.completion_tokens,
                body.amount,
                body.issued_at,
            )
            if rid != receipt_id(row[9]) or tuple(row[1:9]) != copied:
                report.problems.append(f"receipt {rid}: its columns do not match its signed body")
                continue
            report.receipts += 1
            if body.node in mine:
                report.earned += body.amount
            if body.client in mine:
                report.spent += body.amount
        summary = self.summary(mine)
        if abs(summary.earned - report.earned) > 1e-9 * max(1.0, report.earned) or abs(
            summary.spent - report.spent
        ) > 1e-9 * max(1.0, report.spent):
            report.problems.append(
                f"balances from the table ({summary.earned}, {summary.spent}) differ from the "
                f"signed receipts ({report.earned}, {report.spent})"
            )
        return report
