"""ledger layer: countersigned usage receipts in SQLite, balances derived from them alone."""

from dinet.ledger.store import LEDGER_FILE, Ledger, PeerAccount, StoredReceipt, Summary, VerifyReport

__all__ = ["LEDGER_FILE", "Ledger", "PeerAccount", "StoredReceipt", "Summary", "VerifyReport"]
