"""The production verification engine, bound to a test's rolled-back transaction.

The backend runs the real prepared, grouped statements and the recorder the real batched usage INSERT; only
their connection is the test's own (so the rows they touch vanish with the test) and the recorder flushes at
once instead of from its writer thread (so a test reads its usage rows right after the call).
"""

from __future__ import annotations

from typing import Any

from portal.verification.backend import DirectBackend, Row
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
    def __init__(self, dbapi_connection: Any) -> None:
        super().__init__("")
        self._dbapi_connection = dbapi_connection

    def connect(self) -> Any:
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


def transaction_verifier(sqlalchemy_connection: Any, pepper: str) -> Verifier:
    """A verifier whose statements and usage rows run on ``sqlalchemy_connection``'s transaction."""
    dbapi = sqlalchemy_connection.connection.dbapi_connection
    return Verifier(TransactionBackend(dbapi), ImmediateFlushRecorder(dbapi), pepper)
