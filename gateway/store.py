"""The gateway's SQLite state: API keys (hashed) and the usage ledger.

Keys are ``slm-`` + 43 url-safe characters; only their SHA-256 is stored, with a short
prefix for people to recognize them. The ledger has one row per request, written when
the request is admitted (status ``open``), brought up to date while tokens stream, and
closed at the end, plus one row per miner that produced part of the answer (a failover
splits one answer between miners). A gateway killed mid-request leaves its ``open`` rows
with the tokens counted so far; the next start marks them ``interrupted``.

The organic outbox (``organic_samples``) holds a sampled share of user answers exactly as
one miner sent them, with the request it answered: every validator the gateway trusts reads
it over signed HTTP (``gateway.handover``; ``slmnet validator --organic-from URL``), with
what each miner did for users (``miner_service``: refusals, failures, health checks sent and
failed), verifies each answer with its own reference engines and scores the miner. The
gateway only writes; it never verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from protocol.records import SAMPLE_COLUMNS, AnswerRecord, MinerVerdict, OrganicSample, ServiceReport, sample_from_row
from shell.sqlite import add_columns, open_db, transaction

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
CREATE INDEX IF NOT EXISTS usage_by_key_time ON usage (key_id, started);
CREATE TABLE IF NOT EXISTS organic_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, model TEXT NOT NULL,
    request TEXT NOT NULL, answer TEXT NOT NULL, replayable INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS miner_service (hotkey TEXT NOT NULL, kind TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (hotkey, kind));
CREATE TABLE IF NOT EXISTS validator_verdicts (
    validator TEXT NOT NULL, hotkey TEXT NOT NULL, verdict TEXT NOT NULL, time REAL NOT NULL, PRIMARY KEY (validator, hotkey)
);
CREATE TABLE IF NOT EXISTS usage_by_miner (
    request_id TEXT NOT NULL REFERENCES usage(request_id), miner_uid INTEGER NOT NULL, miner_hotkey TEXT NOT NULL, completion_tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_miner_request ON usage_by_miner (request_id);
CREATE INDEX IF NOT EXISTS organic_samples_by_time ON organic_samples (time);
"""
# Kept by triggers in the transaction of every write, whoever writes (any worker, the CLI): a key's
# totals (what /v1/key reports, without summing its ledger) and a version of the keys table that
# moves with every change to a key (what tells each worker's key cache to drop what it holds).
COUNTERS = """
CREATE TABLE IF NOT EXISTS key_usage (
    key_id INTEGER PRIMARY KEY, requests INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0, failovers INTEGER NOT NULL DEFAULT 0
);
CREATE TRIGGER IF NOT EXISTS usage_opened AFTER INSERT ON usage BEGIN
    INSERT INTO key_usage VALUES (NEW.key_id, 1, NEW.prompt_tokens, NEW.completion_tokens, NEW.failovers)
    ON CONFLICT(key_id) DO UPDATE SET requests = requests + 1, prompt_tokens = prompt_tokens + excluded.prompt_tokens,
        completion_tokens = completion_tokens + excluded.completion_tokens, failovers = failovers + excluded.failovers;
END;
CREATE TRIGGER IF NOT EXISTS usage_counted AFTER UPDATE OF prompt_tokens, completion_tokens, failovers ON usage BEGIN
    UPDATE key_usage SET prompt_tokens = prompt_tokens + NEW.prompt_tokens - OLD.prompt_tokens,
        completion_tokens = completion_tokens + NEW.completion_tokens - OLD.completion_tokens, failovers = failovers + NEW.failovers - OLD.failovers
    WHERE key_id = NEW.key_id;
END;
CREATE TABLE IF NOT EXISTS keys_version (id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL);
INSERT OR IGNORE INTO keys_version VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS key_added AFTER INSERT ON api_keys BEGIN UPDATE keys_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS key_changed AFTER UPDATE ON api_keys BEGIN UPDATE keys_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS key_removed AFTER DELETE ON api_keys BEGIN UPDATE keys_version SET version = version + 1; END;
"""
# What each miner served users (answers with at least one token, and their tokens), kept by a trigger as parts are
# written: the service reports validators read every round cost a row a miner, not a scan of the whole ledger.
MINER_COUNTERS = """
CREATE TABLE IF NOT EXISTS miner_served (hotkey TEXT PRIMARY KEY, answers INTEGER NOT NULL, tokens INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS part_served AFTER INSERT ON usage_by_miner WHEN NEW.completion_tokens > 0 BEGIN
    INSERT INTO miner_served VALUES (NEW.miner_hotkey, 1, NEW.completion_tokens)
    ON CONFLICT(hotkey) DO UPDATE SET answers = answers + 1, tokens = tokens + excluded.tokens;
END;
"""
log = logging.getLogger(__name__)
PRUNE_BATCH = 5000  # rows a prune deletes at most a table: the writer thread holds its transaction briefly; the next tick takes the rest
KEY_PREFIX = "slm-"
MAX_CACHED_KEYS = 100_000
KEY_COLUMNS = "id, name, prefix, created, revoked, rpm, tpm, quota_tokens, quota_period, expires, price"


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    prefix: str
    created: float
    revoked: Optional[float]
    rpm: Optional[int]  # requests per minute; None: unlimited
    tpm: Optional[int]  # tokens per minute (prompt + max_tokens, reserved at admission)
    quota_tokens: Optional[int]  # tokens per quota period, or for the key's lifetime (counted tokens)
    quota_period: Optional[int] = None  # seconds; the quota refills at each multiple of it (UTC); None: lifetime
    expires: Optional[float] = None  # unix time after which the key is refused
    price: Optional[float] = None  # what the key's holder is charged per million tokens (prompt + completion); None: nothing said

    def period_start(self, now: float) -> float:
        """When the key's current quota period began (0: a lifetime quota counts everything)."""
        return (now // self.quota_period) * self.quota_period if self.quota_period else 0.0

    def period_end(self, now: float) -> Optional[float]:
        return self.period_start(now) + self.quota_period if self.quota_period else None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.db = open_db(self.path, threads=True, timeout=5.0)
        self.db.executescript(SCHEMA)
        self._migrate()
        self._count_existing_usage()
        self._count_existing_service()
        self._keys: dict[str, Optional[ApiKey]] = {}  # hash → record (None: unknown), valid while keys_version holds
        self._keys_version = -1

    def close(self) -> None:
        self.db.close()

    # keys

    def _migrate(self) -> None:
        """Columns added since the first schema (quota periods, expiry), added to every database
        that lacks them: a new one, or one made by an older gateway."""
        add_columns(
            self.db,
            (
                ("api_keys", "quota_period", "INTEGER"),
                ("api_keys", "expires", "REAL"),
                ("api_keys", "price", "REAL"),
                ("organic_samples", "replayable", "INTEGER NOT NULL DEFAULT 0"),
            ),
        )
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'miner_verdicts'").fetchone():  # one validator's, by hotkey
            with self.transaction():
                self.db.execute("INSERT OR IGNORE INTO validator_verdicts SELECT '', hotkey, verdict, time FROM miner_verdicts")
                self.db.execute("DROP TABLE miner_verdicts")

    def _count_existing_usage(self) -> None:
        """The counters and their triggers, made once; a ledger written before them is counted then (one scan, ever)."""
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'key_usage'").fetchone():
            return
        # One script, one transaction. Two processes opening an old ledger at once: the second's backfill finds every row there (OR IGNORE).
        backfill = (
            "INSERT OR IGNORE INTO key_usage SELECT key_id, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(failovers) FROM usage GROUP BY key_id"
        )
        self.db.executescript(f"BEGIN IMMEDIATE; {COUNTERS} {backfill}; COMMIT;")

    def _count_existing_service(self) -> None:
        """The per-miner counters and their trigger, made once; parts written before them are counted then."""
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'miner_served'").fetchone():
            return
        backfill = (
            "INSERT OR IGNORE INTO miner_served SELECT miner_hotkey, COUNT(*), SUM(completion_tokens) FROM usage_by_miner "
            "WHERE completion_tokens > 0 GROUP BY miner_hotkey"
        )
        self.db.executescript(f"BEGIN IMMEDIATE; {MINER_COUNTERS} {backfill}; COMMIT;")

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """One transaction around the block, or part of the caller's when one is open."""
        return transaction(self.db)

    def create_key(self, name: str, rpm: Optional[int] = None, tpm: Optional[int] = None, quota_tokens: Optional[int] = None, **more) -> tuple[str, ApiKey]:
        """A new key: the plaintext (shown once) and its record; ``more``: quota_period, expires, price."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        cursor = self.db.execute(
            "INSERT INTO api_keys (name, prefix, hash, created, rpm, tpm, quota_tokens, quota_period, expires, price) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, key[:12], hash_key(key), time.time(), rpm, tpm, quota_tokens, more.get("quota_period"), more.get("expires"), more.get("price")),
        )
        return key, self._existing(cursor.lastrowid)

    def update_key(self, key_id: int, **fields) -> ApiKey:
        """Change a key's limits, expiry or price (rpm, tpm, quota_tokens, quota_period, expires, price; None lifts one)."""
        unknown = set(fields) - {"rpm", "tpm", "quota_tokens", "quota_period", "expires", "price"}
        if unknown:
            raise ValueError(f"not a key setting: {sorted(unknown)}")
        if fields:
            assignments = ", ".join(f"{name} = ?" for name in fields)
            self.db.execute(f"UPDATE api_keys SET {assignments} WHERE id = ?", (*fields.values(), key_id))
        return self._existing(key_id)

    def _existing(self, key_id: Optional[int]) -> ApiKey:
        """The record of a key just written: LookupError if it is not there (deleted meanwhile by another process)."""
        key = self.key_by_id(key_id) if key_id is not None else None
        if key is None:
            raise LookupError(f"no API key with id {key_id}")
        return key

    def _key(self, where: str, value: object) -> Optional[ApiKey]:
        row = self.db.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE {where} = ?", (value,)).fetchone()
        return ApiKey(*row) if row else None

    def key_by_id(self, key_id: int) -> Optional[ApiKey]:
        return self._key("id", key_id)

    def lookup(self, key: str) -> Optional[ApiKey]:
        """The record of a presented key (revoked ones included), or None. Answered from memory while
        no key changed anywhere (one read of keys_version): a revocation, a new limit or expiry made by
        any process counts from the next request, as without the cache."""
        (version,) = self.db.execute("SELECT version FROM keys_version").fetchone()
        if version != self._keys_version:
            self._keys.clear()
            self._keys_version = version
        digest = hash_key(key)
        if digest not in self._keys:
            if len(self._keys) >= MAX_CACHED_KEYS:  # unknown keys are cached too: a flood of them must not grow it
                self._keys.clear()
            self._keys[digest] = self._key("hash", digest)
        return self._keys[digest]

    def keys(self) -> list[ApiKey]:
        return [ApiKey(*row) for row in self.db.execute(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id")]

    def find_key(self, ref: str) -> Optional[ApiKey]:
        """A key by id, name or prefix (what `slmnet keys` accepts)."""
        if ref.isdigit():
            return self.key_by_id(int(ref))
        return self._key("name", ref) or self._key("prefix", ref[:12])

    def revoke(self, key_id: int) -> None:
        self.db.execute("UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), key_id))

    # ledger

    def tokens_used(self, key_id: int, since: float = 0.0) -> int:
        """Counted tokens of the key's requests started at or after ``since`` (0: its totals' counter,
        else the period's rows by the (key, time) index)."""
        if since <= 0:
            totals = self.usage(key_id)
            return totals["prompt_tokens"] + totals["completion_tokens"]
        row = self.db.execute("SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage WHERE key_id = ? AND started >= ?", (key_id, since))
        return row.fetchone()[0]

    def usage(self, key_id: int) -> dict[str, int]:
        """The key's totals over its whole ledger (a counter the ledger's triggers keep: one row read)."""
        row = self.db.execute("SELECT requests, prompt_tokens, completion_tokens, failovers FROM key_usage WHERE key_id = ?", (key_id,)).fetchone()
        return dict(zip(("requests", "prompt_tokens", "completion_tokens", "failovers"), row or (0, 0, 0, 0)))

    def open_request(self, request_id: str, key_id: int, model: str, prompt_tokens: int, started: Optional[float] = None) -> None:
        self.db.execute(
            "INSERT INTO usage (request_id, key_id, model, status, prompt_tokens, started) VALUES (?, ?, ?, 'open', ?, ?)",
            (request_id, key_id, model, prompt_tokens, time.time() if started is None else started),
        )

    def progress(self, request_id: str, completion_tokens: int) -> None:
        self.db.execute("UPDATE usage SET completion_tokens = ? WHERE request_id = ?", (completion_tokens, request_id))

    def close_request(self, request_id: str, status: str, completion_tokens: int, failovers: int, parts: list[tuple[int, str, int]]) -> None:
        """Final counts, and ``parts``: (miner uid, hotkey, completion tokens) per miner that answered."""
        with self.transaction():
            self.db.execute(
                "UPDATE usage SET status = ?, completion_tokens = ?, failovers = ?, finished = ? WHERE request_id = ?",
                (status, completion_tokens, failovers, time.time(), request_id),
            )
            self.db.executemany("INSERT INTO usage_by_miner VALUES (?, ?, ?, ?)", [(request_id, uid, hotkey, n) for uid, hotkey, n in parts])

    def record_request(
        self,
        request_id: str,
        key_id: int,
        model: str,
        prompt_tokens: int,
        started: float,
        status: str,
        completion_tokens: int,
        failovers: int,
        parts: list[tuple[int, str, int]],
    ) -> None:
        """A request opened and closed at once (``open_request`` then ``close_request``, as one row)."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO usage (request_id, key_id, model, status, prompt_tokens, completion_tokens, failovers, started, finished)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (request_id, key_id, model, status, prompt_tokens, completion_tokens, failovers, started, time.time()),
            )
            self.db.executemany("INSERT INTO usage_by_miner VALUES (?, ?, ?, ?)", [(request_id, uid, hotkey, n) for uid, hotkey, n in parts])

    def mark_interrupted(self) -> int:
        """At start: requests a killed gateway left open; returns how many."""
        return self.db.execute("UPDATE usage SET status = 'interrupted' WHERE status = 'open'").rowcount

    def prune(self, now: float, keep_s: float, samples_keep_s: float) -> tuple[int, int]:
        """The retention rule: finished requests (and their parts per miner) that started more than ``keep_s`` ago,
        and organic samples older than ``samples_keep_s``, deleted, at most ``PRUNE_BATCH`` of each; returns how many
        (requests, samples). Never a request its key's quota still counts: a key's cutoff is at most the start of its
        quota period in force. Read key by key on the (key, time) index every request already writes. The totals
        ``/v1/key`` and the validators' service reports read are counters the triggers keep on insert and update; a
        delete leaves them whole."""
        old: list[str] = []
        with self.transaction():
            for key in self.keys():
                quota_counts_rows = key.quota_tokens is not None and bool(key.quota_period) and key.revoked is None
                cutoff = min(now - keep_s, key.period_start(now)) if quota_counts_rows else now - keep_s
                old += [
                    request_id
                    for (request_id,) in self.db.execute(
                        "SELECT request_id FROM usage WHERE key_id = ? AND started < ? AND status != 'open' LIMIT ?", (key.id, cutoff, PRUNE_BATCH - len(old))
                    )
                ]
                if len(old) >= PRUNE_BATCH:
                    break
            self.db.executemany("DELETE FROM usage_by_miner WHERE request_id = ?", [(r,) for r in old])
            self.db.executemany("DELETE FROM usage WHERE request_id = ?", [(r,) for r in old])
            samples = self.db.execute(
                "DELETE FROM organic_samples WHERE id IN (SELECT id FROM organic_samples WHERE time < ? ORDER BY id LIMIT ?)",
                (now - samples_keep_s, PRUNE_BATCH),
            ).rowcount
        if old or samples:
            log.info("retention: %s finished requests older than %g days and %s organic samples deleted", len(old), keep_s / 86400, samples)
        return len(old), samples

    def miner_tokens(self) -> dict[int, int]:
        """Completion tokens per miner uid over the ledger's rows still kept (``prune``)."""
        return dict(self.db.execute("SELECT miner_uid, SUM(completion_tokens) FROM usage_by_miner GROUP BY miner_uid").fetchall())

    def record_sample(self, uid: int, hotkey: str, model: str, request: dict[str, Any], answer: AnswerRecord, replayable: bool = False) -> None:
        """One user answer for the validator to verify: the request a miner got, what it sent back, and
        whether a validator may replay the prompt as a challenge (``--replay-prompts``)."""
        self.db.execute(
            "INSERT INTO organic_samples (time, uid, hotkey, model, request, answer, replayable) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), uid, hotkey, model, json.dumps(request), answer.model_dump_json(), int(replayable)),
        )

    def samples_after(self, last_id: int, limit: int) -> tuple[list[OrganicSample], list[int]]:
        """The outbox's samples after ``last_id``, oldest first, and the ids of rows among them that do
        not read back as samples (skipped, not stuck on)."""
        rows = self.db.execute(f"SELECT {SAMPLE_COLUMNS} FROM organic_samples WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)).fetchall()
        found, skipped = [], []
        for row in rows:
            try:
                found.append(sample_from_row(row))
            except ValueError as exc:
                log.error("%s: read past it", exc)
                skipped.append(row[0])
        return found, skipped

    def save_verdicts(self, validator: str, verdicts: list[MinerVerdict]) -> None:
        with self.transaction():
            self.db.executemany(
                "INSERT INTO validator_verdicts VALUES (?, ?, ?, ?) ON CONFLICT(validator, hotkey) DO UPDATE SET verdict = excluded.verdict, time = excluded.time",
                [(validator, v.hotkey, v.model_dump_json(), time.time()) for v in verdicts],
            )

    def verdicts(self, since: float = 0.0) -> list[tuple[str, MinerVerdict]]:
        """Each validator's latest verdict on each miner it published one for, posted at or after ``since`` (unix
        time): (validator hotkey, verdict)."""
        rows = self.db.execute("SELECT validator, verdict FROM validator_verdicts WHERE time >= ?", (since,))
        return [(validator, MinerVerdict.model_validate_json(raw)) for validator, raw in rows]

    def count_service(self, hotkey: str, kind: str) -> None:
        """One more ``kind`` (refused, failed) for the miner, in the ledger every worker shares."""
        with self.transaction():
            self.db.execute("INSERT INTO miner_service VALUES (?, ?, 1) ON CONFLICT(hotkey, kind) DO UPDATE SET count = count + 1", (hotkey, kind))

    def count_health(self, checks: dict[str, bool]) -> None:
        """One health tick: every miner checked (hotkey → whether it answered 200) counts one ``checked``, a failed one one ``unreachable``."""
        upsert = "INSERT INTO miner_service VALUES (?, ?, 1) ON CONFLICT(hotkey, kind) DO UPDATE SET count = count + 1"
        with self.transaction():
            self.db.executemany(upsert, [(hotkey, "checked") for hotkey in checks])
            self.db.executemany(upsert, [(hotkey, "unreachable") for hotkey, healthy in checks.items() if not healthy])

    def service_reports(self) -> list[ServiceReport]:
        """Each miner's service to users so far: answers and tokens from the ledger; refusals, failures and
        health checks (sent, failed) counted as they happened."""
        served = {h: (n, t) for h, n, t in self.db.execute("SELECT hotkey, answers, tokens FROM miner_served")}
        counted: dict[str, dict[str, int]] = {}
        for hotkey, kind, count in self.db.execute("SELECT hotkey, kind, count FROM miner_service"):
            counted.setdefault(hotkey, {})[kind] = count
        return [
            ServiceReport(
                hotkey=hotkey,
                served=served.get(hotkey, (0, 0))[0],
                tokens=served.get(hotkey, (0, 0))[1],
                **{kind: counted.get(hotkey, {}).get(kind, 0) for kind in ("refused", "failed", "checked", "unreachable")},
            )
            for hotkey in sorted(set(served) | set(counted))
        ]
