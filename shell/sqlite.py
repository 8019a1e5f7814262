"""The roles' SQLite state, opened one way: WAL, autocommit outside explicit transactions, and one
transaction helper (``BEGIN IMMEDIATE``: the write lock is taken at the start, so two processes writing one
file wait for each other instead of failing half way), shared by the validator's store and the gateway's."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterable, Iterator


def open_db(path: Path, threads: bool = False, timeout: float = 10.0) -> sqlite3.Connection:
    """A connection to ``path`` (its folder made): WAL, synchronous NORMAL, foreign keys on; ``threads``: one
    connection used from several threads (SQLite serializes them)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=timeout, check_same_thread=not threads)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One transaction around the block (rolled back by any exception), or part of the caller's when one is open."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def add_columns(db: sqlite3.Connection, columns: Iterable[tuple[str, str, str]]) -> None:
    """(table, column, type) added where a database made by an older version lacks them."""
    for table, column, kind in columns:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
