"""``slmnet validator replay``: recheck a recorded round from the validator's state and a reference engine.

A round's record holds its seed, the miners it queried (hotkey, model, dtype, declaration),
and for each challenge what the miner sent: token ids, reported logprobs, text, finish and
the arrival of every chunk (``validator.rounds._answer_record``). The replay rebuilds the
challenges from the seed, verifies every answer again on the given reference engine,
recomputes speed and correctness from the recorded chunks, pools the evidence of all
earlier rounds, and scores the round with the validator's own code (``score_round``). Where
anything differs from what was recorded — the challenges, a verdict, an answer's evidence,
a score, who was flagged — it says so. Anyone holding a validator's state can check its
weights this way.

What cannot be rechecked is said too: answers that never reached the verifier (a protocol
violation, an error, a timeout) are taken as recorded, since the raw stream is not kept.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

import aiohttp

from engine import Engine
from models.subnet import ModelList
from protocol.records import AnswerRecord, RoundSummary
from scoring.aggregate import BUFFERED_WINDOW, Outcome
from scoring.evidence import Evidence, SequentialParams
from scoring.fidelity import AnswerStats
from scoring.latency import StreamTiming, measure
from validator.challenges import generate, grade
from validator.rounds import Result, Target, current_evidence, pool_evidence, score_round
from validator.standings import apply_organic, apply_rewards
from validator.store import Store
from models.tokenizer import ModelTokenizer
from validator.verify import MinerResponse, ReferenceEngine, ReferenceFailed, verify


@dataclass
class Replay:
    round: int
    answers: int = 0  # verified again
    taken_as_recorded: int = 0  # never reached the verifier: not rechecked
    differences: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return not self.differences


def _targets(summary: RoundSummary) -> list[Target]:
    return [Target(uid, hotkey, "", model, 1, dtype, declaration) for uid, (hotkey, model, dtype, declaration) in summary.targets.items()]


def evidence_before(store: Store, round_index: int) -> dict[str, Evidence]:
    """Every hotkey's pooled evidence as it stood when ``round_index`` began, folded from the recorded rounds."""
    pooled: dict[str, Evidence] = {}
    for earlier in range(round_index):
        record = store.round_record(earlier)
        if record is None or not record[0].targets:
            continue
        summary, rows = record
        for target in _targets(summary):
            stats = [
                Result(r["uid"], r["hotkey"], r["family"], Outcome(r["outcome"]), stats=AnswerStats(**json.loads(r["stats"])))
                for r in rows
                if r["uid"] == target.uid and r["stats"]
            ]
            pooled[target.hotkey] = pool_evidence(current_evidence(pooled, target), target, stats, earlier, SequentialParams(), announce=False)
    return pooled


async def _recheck(target: Target, challenge, row: Mapping[str, Any], reference: ReferenceEngine, replay: Replay) -> Result:
    """One recorded answer, verified and measured again; differences go to ``replay``."""
    where = f"uid {target.uid} challenge {row['family']}"
    if not row["answer"]:
        replay.taken_as_recorded += 1
        passed = None if row["passed"] is None else bool(row["passed"])
        return Result(target.uid, target.hotkey, row["family"], Outcome(row["outcome"], passed))
    answer = AnswerRecord.model_validate_json(row["answer"])
    verdict = await verify(reference, challenge.request(target.model), MinerResponse.from_record(answer), tolerance=target.tolerance)
    replay.answers += 1
    if int(verdict.passed) != row["passed"]:
        replay.differences.append(
            f"{where}: recorded {'passed' if row['passed'] else 'failed'}, replayed {'passed' if verdict.passed else 'failed'} ({'; '.join(verdict.reasons)})"
        )
    if row["stats"] and asdict(verdict.stats) != json.loads(row["stats"]):
        replay.differences.append(f"{where}: recorded evidence {json.loads(row['stats'])}, replayed {asdict(verdict.stats)}")
    chunks = answer.chunks
    speed = measure(StreamTiming(0.0, tuple(t for t, _ in chunks), tuple(n for _, n in chunks))) if chunks else None
    correct = grade(challenge.answer, answer.text) if challenge.answer is not None and verdict.passed else None
    return Result(target.uid, target.hotkey, row["family"], Outcome("ok", verdict.passed, correct, speed), verdict.reasons, stats=verdict.stats)


def _compare(replay: Replay, what: str, recorded: Any, replayed: Any) -> None:
    if recorded != replayed:
        replay.differences.append(f"{what}: recorded {recorded}, replayed {replayed}")


async def replay_round(store: Store, round_index: int, references: Mapping[str, ReferenceEngine], models: ModelList) -> Replay:
    """Recheck recorded round ``round_index``. ReferenceFailed when the reference engine fails;
    LookupError when the round is not recorded (or was recorded before rounds kept their answers)."""
    record = store.round_record(round_index)
    if record is None:
        raise LookupError(f"round {round_index} is not in this validator's state (last round: {store.last_round()})")
    summary, rows = record
    if not summary.targets and rows:
        raise LookupError(f"round {round_index} was recorded by a version that did not keep what a replay needs")
    replay = Replay(round_index)
    seed = int(summary.seed)
    challenges = generate(seed, summary.challenges)
    targets = _targets(summary)
    results: dict[int, list[Result]] = {}
    for target in targets:
        mine = [r for r in rows if r["uid"] == target.uid]
        if not mine:
            continue  # flagged before the round, or no reference then: not queried
        if [r["family"] for r in mine] != [c.family for c in challenges]:
            replay.differences.append(
                f"uid {target.uid}: recorded challenges {[r['family'] for r in mine]} are not the seed's {[c.family for c in challenges]}"
            )
            continue
        if target.model not in references:
            raise ReferenceFailed(f"no reference engine for {target.model} (uid {target.uid}): give --reference {target.model}=URL")
        results[target.uid] = [await _recheck(target, c, row, references[target.model], replay) for c, row in zip(challenges, mine)]
    history = store.recent_streamed(BUFFERED_WINDOW, before=round_index)
    report = score_round(seed, targets, results, history, evidence_before(store, round_index), round_index)
    apply_rewards(report, targets, models)
    apply_organic(report, store.organic_taken(round_index), {t.uid: t.hotkey for t in targets})
    recorded_scores = summary.scores
    for uid in sorted(set(recorded_scores) | set(report.scores)):
        a, b = recorded_scores.get(uid), report.scores.get(uid)
        if a is None or b is None or not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            replay.differences.append(f"uid {uid} score: recorded {a}, replayed {b}")
    _compare(replay, "fidelity failures", sorted(summary.fidelity_failed), sorted(report.fidelity_failed))
    _compare(replay, "flagged", sorted(summary.flagged), sorted(report.flagged))
    _compare(replay, "buffered", sorted(summary.buffered), sorted(report.buffered))
    return replay


async def replay_with(config, round_index: Optional[int] = None, wait: float = 900.0) -> Replay:
    """Replay a round of the validator whose configuration is ``config`` (its state folder, model
    list, tokenizers and reference engines: attached, or started here and stopped after)."""
    engines = {spec.served_name: Engine(url=spec.url, spec=spec) for spec in config.engines}
    engines.update({model: Engine(url=url) for model, url in config.references})
    store = Store(config.state_dir / "validator.sqlite")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=3)) as session:
        tasks = [asyncio.create_task(engine.run(session)) for engine in engines.values()]
        try:
            deadline = time.monotonic() + wait
            while not all(e.ready for e in engines.values()):
                if time.monotonic() > deadline:
                    raise ReferenceFailed(f"reference engines not ready after {wait:.0f} s: { ({n: e.state for n, e in engines.items()}) }")
                await asyncio.sleep(1)
            tokenizers = {model: ModelTokenizer(folder) for model, folder in config.tokenizers}
            references = {}
            for model, engine in engines.items():
                supported = config.models.get(model)
                references[model] = ReferenceEngine(
                    session,
                    engine.url,
                    model,
                    tokenizers[model],
                    supported.end_token_ids if supported else (),
                    supported.max_context if supported else 1 << 30,
                )
            return await replay_round(store, store.last_round() if round_index is None else round_index, references, config.models)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            store.close()
