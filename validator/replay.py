"""``slmnet validator replay``: recheck a recorded round from the validator's state and a reference engine.

A round's record holds its seed, the miners it queried (hotkey, model, dtype, declaration),
and for each challenge the request sent and what the miner sent: token ids, reported logprobs, text, finish and
the arrival of every chunk (``validator.rounds._judge``). The replay rebuilds each
miner's challenges from the seed and its hotkey (checking that every generated request is the
seed's and every replayed user prompt stands where the seed put a replay), verifies every answer again on the given reference engine,
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

from models.subnet import ModelList
from protocol.records import AnswerRecord, RoundSummary
from scoring.aggregate import BUFFERED_WINDOW, Outcome
from scoring.evidence import Evidence, SequentialParams
from scoring.fidelity import AnswerStats
from validator.challenges import REPLAY, Challenge, generate, miner_seed, slots
from validator.config import ValidatorConfig
from validator.records import Result, RoundInputs, Target
from validator.references import References
from validator.round_score import current_evidence, pool_evidence, score_round
from validator.rounds import challenge_count, outcome_of
from validator.standings import apply_rewards
from validator.store import Store
from validator.verify import ReferenceEngine, ReferenceFailed, verify


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
    """Every hotkey's pooled evidence as it stood when ``round_index`` began, folded from the recorded
    rounds (challenges and users' answers alike) and the forgiveness recorded between them."""
    pooled: dict[str, Evidence] = {}
    forgiven = store.forgiven()
    for earlier in range(round_index + 1):
        for hotkey, before in forgiven:
            if before == earlier:
                pooled.pop(hotkey, None)
        record = store.round_record(earlier) if earlier < round_index else None
        if record is None or not record[0].targets:
            continue
        summary, rows = record
        users = store.organic_taken(earlier)
        for target in _targets(summary):
            answers = [
                Result(r["uid"], r["hotkey"], r["family"], Outcome(r["outcome"]), stats=AnswerStats(**json.loads(r["stats"])))
                for r in rows
                if r["uid"] == target.uid and r["stats"]
            ]
            answers += [Result(v.uid, v.hotkey, "organic", Outcome("ok"), stats=v.stats) for v in users if v.uid == target.uid and v.hotkey == target.hotkey]
            evidence = pool_evidence(current_evidence(pooled, target, summary.block), target, answers, earlier, SequentialParams(), False, summary.block)
            pooled[target.hotkey] = evidence
    return pooled


def _sent(target: Target, challenge: Challenge, replayable: bool, row: Mapping[str, Any], replay: Replay) -> Optional[dict[str, Any]]:
    """The request the record says was sent for one of the seed's challenges, when it is the seed's:
    a generated challenge's prompt and seed are the seed's own (its sampling and budget may be a user's); a replayed user prompt may
    stand only where the seed put a replay. None (and a difference) otherwise."""
    request = json.loads(row["request"])
    where = f"uid {target.uid} challenge {row['family']}"
    if row["family"] == REPLAY:
        if not replayable:
            replay.differences.append(f"{where}: the seed put a generated {challenge.family} here, not a replay")
            return None
        return request
    seeds = challenge.request(target.model)
    if row["family"] != challenge.family or any(request.get(k) != seeds[k] for k in ("messages", "seed")):  # the budget may be a user's
        replay.differences.append(f"{where}: the recorded request is not the seed's {challenge.family} challenge")
        return None
    return request


async def _recheck(target: Target, challenge: Challenge, request: dict[str, Any], row: Mapping[str, Any], reference: ReferenceEngine, replay: Replay) -> Result:
    """One recorded answer, verified and measured again; differences go to ``replay``."""
    where = f"uid {target.uid} challenge {row['family']}"
    if not row["answer"]:
        replay.taken_as_recorded += 1
        passed = None if row["passed"] is None else bool(row["passed"])
        return Result(target.uid, target.hotkey, row["family"], Outcome(row["outcome"], passed, sent_at=row["sent_at"], done_at=row["done_at"]))
    answer = AnswerRecord.model_validate_json(row["answer"])
    verdict = await verify(reference, request, answer, tolerance=target.tolerance)
    replay.answers += 1
    if int(verdict.passed) != row["passed"]:
        replay.differences.append(
            f"{where}: recorded {'passed' if row['passed'] else 'failed'}, replayed {'passed' if verdict.passed else 'failed'} ({'; '.join(verdict.reasons)})"
        )
    replayed = asdict(verdict.stats) if verdict.stats is not None else None
    if row["stats"] and replayed != json.loads(row["stats"]):
        replay.differences.append(f"{where}: recorded evidence {json.loads(row['stats'])}, replayed {replayed}")
    outcome = outcome_of(challenge, row["family"], verdict, answer.text, tuple((at, n) for at, n in answer.chunks or []), row["sent_at"], row["done_at"])
    return Result(target.uid, target.hotkey, row["family"], outcome, verdict.reasons, stats=verdict.stats)


def _compare(replay: Replay, what: str, recorded: Any, replayed: Any) -> None:
    if recorded != replayed:
        replay.differences.append(f"{what}: recorded {recorded}, replayed {replayed}")


def _compare_figures(replay: Replay, what: str, recorded: Mapping[int, float], replayed: Mapping[int, float]) -> None:
    """uid → figure, equal up to float rounding (a uid on one side only is a difference)."""
    for uid in sorted(set(recorded) | set(replayed)):
        a, b = recorded.get(uid), replayed.get(uid)
        if a is None or b is None or not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            replay.differences.append(f"uid {uid} {what}: recorded {a}, replayed {b}")


async def replay_round(store: Store, round_index: int, references: Mapping[str, ReferenceEngine], models: ModelList) -> Replay:
    """Recheck recorded round ``round_index``. ReferenceFailed when the reference engine fails;
    LookupError when the round is not recorded (or was recorded before rounds kept their answers)."""
    record = store.round_record(round_index)
    if record is None:
        raise LookupError(f"round {round_index} is not in this validator's state (last round: {store.last_round()})")
    summary, rows = record
    if (not summary.targets and rows) or any(r["request"] is None for r in rows):
        raise LookupError(f"round {round_index} was recorded by a version that did not keep what a replay needs")
    replay = Replay(round_index)
    seed = int(summary.seed)
    targets = _targets(summary)
    before = evidence_before(store, round_index)
    results: dict[int, list[Result]] = {}
    for target in targets:
        mine = [r for r in rows if r["uid"] == target.uid]
        if not mine:
            continue  # flagged before the round, or no reference then: not queried
        own = miner_seed(seed, target.hotkey)
        count = current_evidence(before, target, summary.block).challenges(challenge_count(summary.challenges, summary.probed.get(target.uid, 0)))
        challenges, replayable = generate(own, count), [r for _, r in slots(own, count)]
        if len(mine) != len(challenges):
            replay.differences.append(f"uid {target.uid}: {len(mine)} answers recorded, the round sent {len(challenges)}")
            continue
        sent = [request for c, r, row in zip(challenges, replayable, mine) if (request := _sent(target, c, r, row, replay)) is not None]
        if len(sent) != len(challenges):
            continue
        if target.model not in references:
            raise ReferenceFailed(f"no reference engine for {target.model} (uid {target.uid}): give --reference {target.model}=URL")
        results[target.uid] = [await _recheck(target, c, request, row, references[target.model], replay) for c, request, row in zip(challenges, sent, mine)]
    inputs = RoundInputs(
        seed=seed,
        round_index=round_index,
        block=summary.block,
        history=store.recent_streamed(BUFFERED_WINDOW, before=round_index),
        evidence=before,
        organic=store.organic_taken(round_index),
        service=summary.service,
    )
    report = score_round(inputs, targets, results, summary.probed)
    apply_rewards(report, targets, models)
    _compare_figures(replay, "score", summary.scores, report.scores)
    _compare(replay, "fidelity failures", sorted(summary.fidelity_failed), sorted(report.fidelity_failed))
    _compare(replay, "flagged", sorted(summary.flagged), sorted(report.flagged))
    _compare(replay, "buffered", sorted(summary.buffered), sorted(report.buffered))
    _compare_figures(replay, "delivered tokens/s", summary.delivered, report.delivered)
    return replay


async def replay_with(config: ValidatorConfig, round_index: Optional[int] = None, wait: float = 900.0) -> Replay:
    """Replay a round of the validator whose configuration is ``config`` (its state folder, model
    list, tokenizers and reference engines: attached, or started here and stopped after)."""
    references_of = References(config)
    store = Store(config.state_dir / "validator.sqlite")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=3)) as session:
        tasks = [asyncio.create_task(engine.run(session)) for engine in references_of.engines.values()]
        try:
            deadline = time.monotonic() + wait
            while len(references := references_of.ready(session)) < len(references_of.engines):
                if time.monotonic() > deadline:
                    raise ReferenceFailed(f"reference engines not ready after {wait:.0f} s: {references_of.states()}")
                await asyncio.sleep(1)
            return await replay_round(store, store.last_round() if round_index is None else round_index, references, config.models)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            store.close()
