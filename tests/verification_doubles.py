"""The production verification engine, bound to a test's rolled-back transaction.

The backend runs the real prepared, grouped statements and the recorder the real batched usage INSERT; only
their connection is the test's own (so the rows they touch vanish with the test) and the recorder flushes at
once instead of from its writer thread (so a test reads its usage rows right after the call).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from portal.verification.backend import DirectBackend, Row
from portal.verification.budget import InvalidKeyBudget
from portal.verification.usage_writer import BufferedRecorder
from portal.verification.verifier import Verifier


class TransactionConnection:
    """A psycopg2 connection inside the test's transaction: commits, rollbacks and closes belong to the test."""

    def __init__(self, dbapi_connection: Any) -> None:
        self._conn = dbapi_connection
        self.closed = False
        self.notices = dbapi_connection.notices

    @property
    def autocommit(self) -> bool:
        return True

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        pass

    def cursor(self) -> Any:
        return self._conn.cursor()

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        raise AssertionError("a verification statement failed inside the test's transaction")

    def close(self) -> None:
        pass


class TransactionBackend(DirectBackend):
    def __init__(self, dbapi_connection: Any, pool_mode: str = "session") -> None:
        super().__init__("", watch=False, pool_mode=pool_mode)  # the test's connection is not the watchdog's to shut
        self._dbapi_connection = dbapi_connection
        self.calls = 0  # verifications that reached the database

    def verify_many(self, key_hashes: Any, scopes: Any = None, ips: Any = None) -> list[Row | None]:
        self.calls += len(key_hashes)
        return super().verify_many(key_hashes, scopes, ips)

    def connect(self, deadline: float | None = None) -> Any:
        with self._dbapi_connection.cursor() as cur:
            cur.execute("DEALLOCATE ALL")  # the pooled connection may hold an earlier test's statements
        return TransactionConnection(self._dbapi_connection)


class ImmediateFlushRecorder(BufferedRecorder):
    def __init__(self, dbapi_connection: Any) -> None:
        super().__init__("")
        self._dbapi_connection = dbapi_connection

    def connect(self) -> Any:
        return TransactionConnection(self._dbapi_connection)

    def _start(self) -> None:
        """No writer thread: :meth:`add` flushes."""

    def add(self, row: Row) -> None:
        super().add(row)
        self.flush()

    def count_invalid(self, at: datetime, address: str | None, outcome: str) -> None:
        super().count_invalid(at, address, outcome)
        self.flush()


def transaction_verifier(sqlalchemy_connection: Any, pepper: str, budget: InvalidKeyBudget | None = None) -> Verifier:
    """A verifier whose statements and usage rows run on ``sqlalchemy_connection``'s transaction."""
    dbapi = sqlalchemy_connection.connection.dbapi_connection
    return Verifier(TransactionBackend(dbapi), ImmediateFlushRecorder(dbapi), pepper, budget)
