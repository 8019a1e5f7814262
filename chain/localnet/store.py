"""The localnet's persistent state: one SQLite file shared by every process.

Several processes (miners, a validator, a gateway, the CLI) open the same folder at
once. SQLite in WAL mode gives each reader a consistent snapshot, and every state
change runs inside ``BEGIN IMMEDIATE`` so writers queue instead of losing updates.
Amounts are integers in rao (1 TAO = 1e9 rao); scores are floats in [0, 1].
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import codec

DB_NAME = "chain.sqlite"
RAO_PER_TAO = 1_000_000_000
U16_MAX = 65535

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subnets (
    netuid INTEGER PRIMARY KEY,
    hp TEXT NOT NULL,           -- hyperparameters (JSON)
    state TEXT NOT NULL         -- epoch bookkeeping, owner, name (JSON)
);
CREATE TABLE IF NOT EXISTS accounts (
    address TEXT PRIMARY KEY, free INTEGER NOT NULL DEFAULT 0, nonce INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS owners (hotkey TEXT PRIMARY KEY, coldkey TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS neurons (
    netuid INTEGER NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, coldkey TEXT NOT NULL,
    registered_at INTEGER NOT NULL, last_update INTEGER NOT NULL DEFAULT 0,
    axon TEXT, scores TEXT NOT NULL DEFAULT '{}', validator_permit INTEGER NOT NULL DEFAULT 0,
    weights TEXT NOT NULL DEFAULT '[]', bonds TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (netuid, uid), UNIQUE (netuid, hotkey)
);
CREATE TABLE IF NOT EXISTS stakes (
    hotkey TEXT NOT NULL, coldkey TEXT NOT NULL, netuid INTEGER NOT NULL, rao INTEGER NOT NULL,
    PRIMARY KEY (hotkey, coldkey, netuid)
);
CREATE TABLE IF NOT EXISTS commitments (
    netuid INTEGER NOT NULL, hotkey TEXT NOT NULL, block INTEGER NOT NULL,
    deposit INTEGER NOT NULL, info TEXT NOT NULL, PRIMARY KEY (netuid, hotkey)
);
CREATE TABLE IF NOT EXISTS weight_commits (
    id INTEGER PRIMARY KEY AUTOINCREMENT, netuid INTEGER NOT NULL, hotkey TEXT NOT NULL,
    block INTEGER NOT NULL, epoch INTEGER NOT NULL, kind TEXT NOT NULL, commit_data TEXT NOT NULL,
    reveal_round INTEGER
);
CREATE TABLE IF NOT EXISTS extrinsics (
    hash TEXT PRIMARY KEY, block INTEGER NOT NULL, idx INTEGER NOT NULL, signer TEXT NOT NULL,
    module TEXT NOT NULL, function TEXT NOT NULL, success INTEGER NOT NULL,
    error TEXT, events TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS extrinsics_block ON extrinsics (block);
"""


class LocalnetMissing(FileNotFoundError):
    """The folder holds no localnet (run `slmnet localnet init` first)."""


@dataclass(frozen=True)
class Genesis:
    """Facts fixed when the localnet is created."""

    genesis_hash: str
    genesis_time: float  # unix seconds at block 0
    block_time: float  # seconds per block
    mev_private_key: bytes  # ML-KEM-768 seed of the block author's shield key


def connect(directory: Path) -> sqlite3.Connection:
    """Open the state database; raises :class:`LocalnetMissing` when absent."""
    path = Path(directory) / DB_NAME
    if not path.exists():
        raise LocalnetMissing(f"no localnet at {directory} (create one with `slmnet localnet init --dir {directory}`)")
    return _open(path)


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def create(directory: Path, genesis: Genesis) -> sqlite3.Connection:
    """Create an empty chain in ``directory``; FileExistsError if one is there."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / DB_NAME
    if path.exists():
        raise FileExistsError(f"a localnet already exists at {directory}")
    conn = _open(path)
    conn.executescript(SCHEMA)
    with write(conn):
        for key, value in (
            ("genesis_hash", genesis.genesis_hash),
            ("genesis_time", genesis.genesis_time),
            ("block_time", genesis.block_time),
            ("mev_private_key", genesis.mev_private_key),
        ):
            conn.execute("INSERT INTO meta VALUES (?, ?)", (key, codec.to_json(value)))
    return conn


def read_genesis(conn: sqlite3.Connection) -> Genesis:
    rows = {r["key"]: codec.from_json(r["value"]) for r in conn.execute("SELECT * FROM meta")}
    return Genesis(
        genesis_hash=rows["genesis_hash"],
        genesis_time=float(rows["genesis_time"]),
        block_time=float(rows["block_time"]),
        mev_private_key=rows["mev_private_key"],
    )


def current_block(genesis: Genesis, now: float | None = None) -> int:
    """Blocks advance with the clock: one every ``block_time`` seconds since genesis."""
    now = time.time() if now is None else now
    return max(0, int((now - genesis.genesis_time) / genesis.block_time))


@contextlib.contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One atomic state change: all of it lands, or (on any exception) none of it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A consistent read of several tables (WAL readers never block writers)."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")
