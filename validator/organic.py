"""Organic samples handed over by a gateway: user answers, verified like challenges in the validator's loop.

A gateway writes a sampled share of its users' answers, each as one miner sent it with the
request it answered, into the outbox in its own SQLite (``organic_samples``). The validator
opens that file read-only (``--organic-from``), takes the rows after the last one it read
(its cursor lives in its own store and moves in the transaction that records the verdicts,
so a restart neither skips nor repeats one), verifies
each with its own reference engine for the model, and records the verdict in its own store,
where the next round folds it in: a user's answer that fails counts like a failed
challenge. A sample the reference cannot score, or whose model has no reference here,
counts neither for nor against the miner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from pydantic import ValidationError

from protocol.records import AnswerRecord
from validator.store import Store
from validator.verify import MinerResponse, ReferenceEngine, ReferenceFailed, verify

log = logging.getLogger(__name__)
SAMPLES_PER_ROUND = 32  # a bound on the reference engine's extra work per round


@dataclass(frozen=True)
class Sample:
    id: int
    uid: int
    hotkey: str
    model: str
    request: dict[str, Any]
    answer: Optional[MinerResponse]  # None: the row is not an answer record (a gateway's bug, never a miner's): skipped


class Outbox:
    """A gateway's organic outbox, read-only."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def after(self, last_id: int, limit: int) -> list[Sample]:
        """The samples written after ``last_id``, oldest first (none while the gateway has not made the file)."""
        if not self.path.exists():
            return []
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute(
                "SELECT id, uid, hotkey, model, request, answer FROM organic_samples WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)
            ).fetchall()
        except sqlite3.OperationalError as exc:  # a gateway older than the outbox, or a file that is not a gateway's
            log.warning("no organic outbox in %s: %s", self.path, exc)
            return []
        finally:
            db.close()
        return [Sample(row_id, uid, hotkey, model, json.loads(request), _answer(row_id, answer)) for row_id, uid, hotkey, model, request, answer in rows]


def _answer(row_id: int, raw: str) -> Optional[MinerResponse]:
    try:
        return MinerResponse.from_record(AnswerRecord.model_validate_json(raw))
    except ValidationError as exc:  # one unreadable row must not hold up every sample after it
        log.warning("organic sample %s is not an answer record, skipped: %s", row_id, exc)
        return None


async def verify_samples(outbox: Outbox, store: Store, references: Mapping[str, ReferenceEngine], limit: int = SAMPLES_PER_ROUND) -> int:
    """Verify the samples not yet read and record their verdicts; returns how many were judged."""
    # Another process's SQLite file, maybe on a slow disk: read off the event loop, which times miners' streams.
    samples = await asyncio.to_thread(outbox.after, store.organic_cursor(str(outbox.path)), limit)
    verdicts = []
    for sample in samples:
        reference = references.get(sample.model)
        if reference is None or sample.answer is None:
            continue
        try:
            verdict = await verify(reference, sample.request, sample.answer)
        except ReferenceFailed as exc:
            log.warning("organic sample %s of uid %s not verified: %s", sample.id, sample.uid, exc)
            continue
        if not verdict.passed:
            log.warning("uid %s failed verification on a user's answer: %s", sample.uid, "; ".join(verdict.reasons))
        verdicts.append((time.time(), sample.uid, sample.hotkey, sample.model, verdict.passed, "; ".join(verdict.reasons)))
    if samples:
        store.record_organic(str(outbox.path), samples[-1].id, verdicts)
    return len(verdicts)
