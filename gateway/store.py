"""The gateway's SQLite state: API keys (hashed) and the usage ledger.

Keys are ``slm-`` + 43 url-safe characters; only their SHA-256 is stored, with a short
prefix for people to recognize them. The ledger has one row per request, written when
the request is admitted (status ``open``), brought up to date while tokens stream, and
closed at the end, plus one row per miner that produced part of the answer (a failover
splits one answer between miners). A gateway killed mid-request leaves its ``open`` rows
with the tokens counted so far; the next start marks them ``interrupted``.

The organic outbox (``organic_samples``) holds a sampled share of user answers exactly as
one miner sent them, with the request it answered: a validator reads it (``slmnet
validator --organic-from`` this file, read-only), verifies each with its own reference
engines and scores the miner. The gateway only writes; it never verifies.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, prefix TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, created REAL NOT NULL, revoked REAL,
    rpm INTEGER, tpm INTEGER, quota_tokens INTEGER
);
CREATE TABLE IF NOT EXISTS usage (
    request_id TEXT PRIMARY KEY, key_id INTEGER NOT NULL REFERENCES api_keys(id), model TEXT NOT NULL, status TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0, failovers INTEGER NOT NULL DEFAULT 0,
    started REAL NOT NULL, finished REAL
);
CREATE INDEX IF NOT EXISTS usage_by_key ON usage (key_id);
CREATE TABLE IF NOT EXISTS organic_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, model TEXT NOT NULL,
    request TEXT NOT NULL, answer TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_by_miner (
    request_id TEXT NOT NULL REFERENCES usage(request_id), miner_uid INTEGER NOT NULL, miner_hotkey TEXT NOT NULL, completion_tokens INTEGER NOT NULL
);
"""
KEY_PREFIX = "slm-"


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    prefix: str
    created: float
    revoked: Optional[float]
    rpm: Optional[int]  # requests per minute; None: unlimited
    tpm: Optional[int]  # tokens per minute (prompt + max_tokens, reserved at admission)
    quota_tokens: Optional[int]  # tokens for the key's lifetime (counted tokens)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Store:
    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # keys

    def create_key(self, name: str, rpm: Optional[int] = None, tpm: Optional[int] = None, quota_tokens: Optional[int] = None) -> tuple[str, ApiKey]:
        """A new key: the plaintext (shown once) and its record."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        cursor = self.db.execute(
            "INSERT INTO api_keys (name, prefix, hash, created, rpm, tpm, quota_tokens) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (name, key[:12], hash_key(key), time.time(), rpm, tpm, quota_tokens),
        )
        return key, self.key_by_id(cursor.lastrowid)

    def _key(self, where: str, value: object) -> Optional[ApiKey]:
        row = self.db.execute(f"SELECT id, name, prefix, created, revoked, rpm, tpm, quota_tokens FROM api_keys WHERE {where} = ?", (value,)).fetchone()
        return ApiKey(*row) if row else None

    def key_by_id(self, key_id: int) -> Optional[ApiKey]:
        return self._key("id", key_id)

    def lookup(self, key: str) -> Optional[ApiKey]:
        """The record of a presented key (revoked ones included), or None."""
        return self._key("hash", hash_key(key))

    def keys(self) -> list[ApiKey]:
        return [ApiKey(*row) for row in self.db.execute("SELECT id, name, prefix, created, revoked, rpm, tpm, quota_tokens FROM api_keys ORDER BY id")]

    def find_key(self, ref: str) -> Optional[ApiKey]:
        """A key by id, name or prefix (what `slmnet keys` accepts)."""
        if ref.isdigit():
            return self.key_by_id(int(ref))
        return self._key("name", ref) or self._key("prefix", ref[:12])

    def revoke(self, key_id: int) -> None:
        self.db.execute("UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), key_id))

    # ledger

    def tokens_used(self, key_id: int) -> int:
        (used,) = self.db.execute("SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage WHERE key_id = ?", (key_id,)).fetchone()
        return used

    def usage(self, key_id: int) -> dict[str, int]:
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(failovers), 0) FROM usage WHERE key_id = ?",
            (key_id,),
        ).fetchone()
        return dict(zip(("requests", "prompt_tokens", "completion_tokens", "failovers"), row))

    def open_request(self, request_id: str, key_id: int, model: str, prompt_tokens: int) -> None:
        self.db.execute(
            "INSERT INTO usage (request_id, key_id, model, status, prompt_tokens, started) VALUES (?, ?, ?, 'open', ?, ?)",
            (request_id, key_id, model, prompt_tokens, time.time()),
        )

    def progress(self, request_id: str, completion_tokens: int) -> None:
        self.db.execute("UPDATE usage SET completion_tokens = ? WHERE request_id = ?", (completion_tokens, request_id))

    def close_request(self, request_id: str, status: str, completion_tokens: int, failovers: int, parts: list[tuple[int, str, int]]) -> None:
        """Final counts, and ``parts``: (miner uid, hotkey, completion tokens) per miner that answered."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "UPDATE usage SET status = ?, completion_tokens = ?, failovers = ?, finished = ? WHERE request_id = ?",
                (status, completion_tokens, failovers, time.time(), request_id),
            )
            self.db.executemany("INSERT INTO usage_by_miner VALUES (?, ?, ?, ?)", [(request_id, uid, hotkey, n) for uid, hotkey, n in parts])

    def mark_interrupted(self) -> int:
        """At start: requests a killed gateway left open; returns how many."""
        return self.db.execute("UPDATE usage SET status = 'interrupted' WHERE status = 'open'").rowcount

    def miner_tokens(self) -> dict[int, int]:
        return dict(self.db.execute("SELECT miner_uid, SUM(completion_tokens) FROM usage_by_miner GROUP BY miner_uid").fetchall())

    def record_sample(self, uid: int, hotkey: str, model: str, request: dict[str, Any], answer: dict[str, Any]) -> None:
        """One user answer for the validator to verify: the request a miner got, and what it sent back."""
        self.db.execute(
            "INSERT INTO organic_samples (time, uid, hotkey, model, request, answer) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), uid, hotkey, model, json.dumps(request), json.dumps(answer)),
        )
