"""The validator's state in SQLite (WAL): standings per miner, and every round's results.

Organic results are the validator's own verdicts on user answers a gateway handed over
(``validator.organic``): ``record_organic`` writes them, ``take_organic`` folds them into the
next round; ``organic_cursor`` is how far into each gateway's outbox the validator has read.

A standing is keyed by hotkey: a uid re-registered by someone else starts from zero.
Each round is written in one transaction, so a validator killed at any moment restarts
with the standings of the last complete round.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Optional

from protocol.records import FamilyScore, RoundSummary
from scoring.aggregate import Standing
from scoring.evidence import Evidence
from scoring.fidelity import AnswerStats
from shell.sqlite import add_columns, open_db, transaction
from validator.records import UserVerdict

SCHEMA = """
CREATE TABLE IF NOT EXISTS standings (hotkey TEXT PRIMARY KEY, uid INTEGER NOT NULL, ema REAL NOT NULL, rounds INTEGER NOT NULL, banned_until INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY, seed TEXT NOT NULL, block INTEGER NOT NULL, started REAL NOT NULL, summary TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    round INTEGER NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, family TEXT NOT NULL, outcome TEXT NOT NULL,
    passed INTEGER, reasons TEXT, correct REAL, ttft REAL, tokens_per_s REAL, tokens INTEGER, streamed INTEGER
);
CREATE INDEX IF NOT EXISTS results_by_uid ON results (uid, round);
CREATE INDEX IF NOT EXISTS results_by_round ON results (round);
CREATE TABLE IF NOT EXISTS quality (
    hotkey TEXT NOT NULL, model TEXT NOT NULL, family TEXT NOT NULL, answers INTEGER NOT NULL, correct INTEGER NOT NULL,
    PRIMARY KEY (hotkey, model, family)
);
CREATE TABLE IF NOT EXISTS weights (block INTEGER PRIMARY KEY, weights TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS organic (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, model TEXT NOT NULL,
    passed INTEGER NOT NULL, reasons TEXT, taken_in_round INTEGER, stats TEXT
);
CREATE TABLE IF NOT EXISTS organic_cursor (source TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS evidence (
    hotkey TEXT PRIMARY KEY, model TEXT NOT NULL, cusum REAL NOT NULL, answers INTEGER NOT NULL, tokens INTEGER NOT NULL,
    mismatches INTEGER NOT NULL, reported INTEGER NOT NULL, exceedances INTEGER NOT NULL, flagged_round INTEGER, flagged_block INTEGER
);
CREATE TABLE IF NOT EXISTS forgiven (hotkey TEXT NOT NULL, before_round INTEGER, time REAL NOT NULL, reason TEXT);
"""
# Columns added to ``results`` after its first release, for state written before them: what the
# per-miner test counted in the answer, the answer itself and the request it answered (for ``slmnet validator replay``), and
# when it was sent and done on the round's clock (the capacity probe).
ADDED_RESULT_COLUMNS = (("streamed", "INTEGER"), ("stats", "TEXT"), ("answer", "TEXT"), ("request", "TEXT"), ("sent_at", "REAL"), ("done_at", "REAL"))
RESULT_COLUMNS = (
    "round", "uid", "hotkey", "family", "outcome", "passed", "reasons", "correct", "ttft", "tokens_per_s", "tokens", "streamed", "stats", "answer", "request",
    "sent_at", "done_at",
)  # fmt: skip
EVIDENCE_FIELDS = ("model", "cusum", "answers", "tokens", "mismatches", "reported", "exceedances", "flagged_round", "flagged_block")
# Columns added to other tables after their first release: (table, column, type).
ADDED_COLUMNS = (("organic", "stats", "TEXT"), ("evidence", "flagged_block", "INTEGER"), ("standings", "capacity", "REAL NOT NULL DEFAULT 0"))
# Graded answers (a checkable family, verification passed) by miner, the model it was asked for, and
# family, added to ``quality`` in the transaction that stores their round. A right answer is one graded 1.
ADD_QUALITY = """
INSERT INTO quality (hotkey, model, family, answers, correct)
SELECT hotkey, json_extract(request, '$.model'), family, COUNT(*), SUM(correct >= 1.0) FROM results
WHERE {where} AND correct IS NOT NULL AND json_extract(request, '$.model') IS NOT NULL GROUP BY 1, 2, 3
ON CONFLICT (hotkey, model, family) DO UPDATE SET answers = answers + excluded.answers, correct = correct + excluded.correct
"""


class Store:
    def __init__(self, path: Path):
        self.db = open_db(Path(path))
        had_quality = self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'quality'").fetchone() is not None
        self.db.executescript(SCHEMA)
        if "declaration" in self._columns("evidence"):  # evidence was kept per declaration before it was kept per model
            self.db.execute("ALTER TABLE evidence RENAME COLUMN declaration TO model")
        add_columns(self.db, (*(("results", n, k) for n, k in ADDED_RESULT_COLUMNS), *ADDED_COLUMNS))
        if not had_quality:  # state from before per-family quality was kept: counted once, from every stored round
            self.db.execute(ADD_QUALITY.format(where="1"))

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        self.db.close()

    def standings(self) -> dict[str, tuple[int, Standing]]:
        rows = self.db.execute("SELECT hotkey, uid, ema, rounds, banned_until, capacity FROM standings")
        return {hotkey: (uid, Standing(ema, rounds, banned_until, capacity)) for hotkey, uid, ema, rounds, banned_until, capacity in rows}

    def last_round(self) -> int:
        (value,) = self.db.execute("SELECT COALESCE(MAX(round), -1) FROM rounds").fetchone()
        return int(value)

    def save_round(
        self,
        round_index: int,
        seed: int,
        block: int,
        started: float,
        summary: RoundSummary,
        standings: dict[str, tuple[int, Standing]],
        results: Iterable[dict[str, Any]],
        evidence: Optional[dict[str, Evidence]] = None,
    ) -> None:
        """The round, its results, the new standings and evidence, all or nothing."""
        with transaction(self.db):
            self.db.execute("INSERT INTO rounds VALUES (?, ?, ?, ?, ?)", (round_index, str(seed), block, started, summary.model_dump_json()))
            self.db.executemany(f"INSERT INTO results ({', '.join(RESULT_COLUMNS)}) VALUES ({', '.join(':' + c for c in RESULT_COLUMNS)})", results)
            self.db.execute(ADD_QUALITY.format(where="round = :round"), {"round": round_index})
            self.db.executemany(
                f"INSERT OR REPLACE INTO evidence VALUES (?, {', '.join('?' for _ in EVIDENCE_FIELDS)})",
                [(hotkey, *(getattr(e, f) for f in EVIDENCE_FIELDS)) for hotkey, e in (evidence or {}).items()],
            )
            self.db.executemany(
                "INSERT INTO standings (hotkey, uid, ema, rounds, banned_until, capacity) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(hotkey) DO UPDATE SET"
                " uid=excluded.uid, ema=excluded.ema, rounds=excluded.rounds, banned_until=excluded.banned_until, capacity=excluded.capacity",
                [(hotkey, uid, s.ema, s.rounds, s.banned_until, s.capacity) for hotkey, (uid, s) in standings.items()],
            )

    def summaries_after(self, round_index: int) -> list[RoundSummary]:
        """The stored summaries of the rounds after ``round_index``, in order."""
        return [
            RoundSummary.model_validate_json(summary)
            for (summary,) in self.db.execute("SELECT summary FROM rounds WHERE round > ? ORDER BY round", (round_index,))
        ]

    def summary(self, round_index: int) -> Optional[RoundSummary]:
        row = self.db.execute("SELECT summary FROM rounds WHERE round = ?", (round_index,)).fetchone()
        return RoundSummary.model_validate_json(row[0]) if row else None

    def quality(self) -> dict[tuple[str, str], list[FamilyScore]]:
        """(hotkey, model) → its graded answers by family, every round so far."""
        scores: dict[tuple[str, str], list[FamilyScore]] = {}
        for hotkey, model, family, answers, correct in self.db.execute("SELECT hotkey, model, family, answers, correct FROM quality ORDER BY family"):
            scores.setdefault((hotkey, model), []).append(FamilyScore(family=family, answers=answers, correct=correct))
        return scores

    def evidence(self) -> dict[str, Evidence]:
        """Hotkey → its pooled evidence about the model it was last judged on."""
        rows = self.db.execute(f"SELECT hotkey, {', '.join(EVIDENCE_FIELDS)} FROM evidence")
        return {hotkey: Evidence(*values) for hotkey, *values in rows}

    def round_record(self, round_index: int) -> Optional[tuple[RoundSummary, list[dict[str, Any]]]]:
        """A stored round's summary and its results (each a dict of the ``results`` columns), or None."""
        row = self.db.execute("SELECT summary FROM rounds WHERE round = ?", (round_index,)).fetchone()
        if row is None:
            return None
        cursor = self.db.execute("SELECT * FROM results WHERE round = ? ORDER BY rowid", (round_index,))
        names = [d[0] for d in cursor.description]
        return RoundSummary.model_validate_json(row[0]), [dict(zip(names, values)) for values in cursor]

    def recent_streamed(self, limit: int, before: Optional[int] = None) -> dict[str, list[bool]]:
        """Hotkey → whether each of its last ``limit`` judged answers (in rounds before ``before``, if
        given) was streamed, oldest first."""
        rows = self.db.execute(
            "SELECT hotkey, streamed FROM (SELECT hotkey, streamed, round, ROW_NUMBER() OVER (PARTITION BY hotkey ORDER BY round DESC, rowid DESC) AS n "
            "FROM results WHERE streamed IS NOT NULL AND round < ?) WHERE n <= ? ORDER BY round, n DESC",
            (before if before is not None else 1 << 62, limit),
        )
        recent: dict[str, list[bool]] = {}
        for hotkey, streamed in rows:
            recent.setdefault(hotkey, []).append(bool(streamed))
        return recent

    def save_weights(self, block: int, weights: dict[int, float]) -> None:
        with transaction(self.db):
            self.db.execute("INSERT OR REPLACE INTO weights VALUES (?, ?)", (block, json.dumps(weights)))

    def last_weights(self) -> Optional[tuple[int, dict[int, float]]]:
        row = self.db.execute("SELECT block, weights FROM weights ORDER BY block DESC LIMIT 1").fetchone()
        return (row[0], {int(k): v for k, v in json.loads(row[1]).items()}) if row else None

    def record_organic(self, source: str, last_id: int, verdicts: Iterable[tuple[float, str, UserVerdict]]) -> None:
        """Verdicts on the samples read from the outbox at ``source`` up to ``last_id`` — (time, model,
        verdict) each — and the new cursor, in one transaction: a validator killed at any moment has
        either recorded a sample's verdict and moved past it, or neither."""
        with transaction(self.db):
            self.db.executemany(
                "INSERT INTO organic (time, uid, hotkey, model, passed, reasons, stats) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (t, v.uid, v.hotkey, model, int(v.passed), v.reasons or None, json.dumps(asdict(v.stats)) if v.stats is not None else None)
                    for t, model, v in verdicts
                ],
            )
            self.db.execute("INSERT INTO organic_cursor VALUES (?, ?) ON CONFLICT(source) DO UPDATE SET last_id = excluded.last_id", (source, last_id))

    def take_organic(self, round_index: int) -> list[UserVerdict]:
        """Organic verdicts not yet folded into a stored round, marked as taken by ``round_index``.
        Those a round took that was never stored (the validator died before ``save_round``: its
        index is ``round_index`` or later) are taken again."""
        pending = "taken_in_round IS NULL OR taken_in_round >= ?"
        with transaction(self.db):
            rows = self.db.execute(f"SELECT {VERDICT_COLUMNS} FROM organic WHERE {pending} ORDER BY id", (round_index,)).fetchall()
            self.db.execute(f"UPDATE organic SET taken_in_round = ? WHERE {pending}", (round_index, round_index))
        return [_verdict(row) for row in rows]

    def organic_taken(self, round_index: int) -> list[UserVerdict]:
        """The organic verdicts ``take_organic`` folded into ``round_index``."""
        rows = self.db.execute(f"SELECT {VERDICT_COLUMNS} FROM organic WHERE taken_in_round = ? ORDER BY id", (round_index,))
        return [_verdict(row) for row in rows]

    def organic_cursor(self, source: str) -> int:
        """The id of the last sample read from the outbox at ``source`` (0: none yet)."""
        row = self.db.execute("SELECT last_id FROM organic_cursor WHERE source = ?", (source,)).fetchone()
        return row[0] if row else 0

    def forgive(self, hotkey: str, reason: str) -> Optional[Evidence]:
        """Lift ``hotkey``'s flag (and its evidence) on purpose, from the next round the validator starts
        (``apply_forgiveness``): recorded, so a replay pools as the live loop did. Returns the evidence
        held now (None: none)."""
        with transaction(self.db):
            self.db.execute("INSERT INTO forgiven (hotkey, before_round, time, reason) VALUES (?, NULL, ?, ?)", (hotkey, time.time(), reason))
        return self.evidence().get(hotkey)

    def apply_forgiveness(self, round_index: int) -> list[str]:
        """At the start of ``round_index``: the hotkeys forgiven since the last round start, their evidence
        dropped and the round they start afresh at recorded."""
        with transaction(self.db):
            pending = [hotkey for (hotkey,) in self.db.execute("SELECT hotkey FROM forgiven WHERE before_round IS NULL")]
            self.db.execute("UPDATE forgiven SET before_round = ? WHERE before_round IS NULL", (round_index,))
            self.db.executemany("DELETE FROM evidence WHERE hotkey = ?", [(hotkey,) for hotkey in pending])
        return pending

    def forgiven(self) -> list[tuple[str, int]]:
        """(hotkey, the round its evidence started afresh at), oldest first."""
        return [tuple(row) for row in self.db.execute("SELECT hotkey, before_round FROM forgiven WHERE before_round IS NOT NULL ORDER BY rowid")]


VERDICT_COLUMNS = "uid, hotkey, passed, COALESCE(reasons, ''), stats"


def _verdict(row: tuple) -> UserVerdict:
    uid, hotkey, passed, reasons, stats = row
    return UserVerdict(uid, hotkey, bool(passed), reasons, AnswerStats(**json.loads(stats)) if stats else None)
