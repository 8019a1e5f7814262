"""What a round is made of, as the validator keeps it: a miner queried (``Target``), one challenge's result
(``Result``), the verdict on one user's answer a gateway handed over (``UserVerdict``), what a round is scored
from besides its answers (``RoundInputs``), and the round's report."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

from protocol.records import AnswerRecord, ServiceCounts
from scoring.aggregate import Outcome, judged_streamed
from scoring.evidence import TOLERANCES, Evidence, SequentialParams
from scoring.fidelity import AnswerStats


@dataclass(frozen=True)
class Target:
    uid: int
    hotkey: str
    url: str
    model: str
    capacity: int
    dtype: str = "float32"  # declared: the verifier's tolerance for its drift
    declaration: str = ""  # what its evidence is kept under: a new declaration starts it afresh

    @property
    def tolerance(self):
        return TOLERANCES.get(self.dtype, TOLERANCES["float32"])


@dataclass
class Result:
    """One challenge answered (or not) by one miner, as stored."""

    uid: int
    hotkey: str
    family: str
    outcome: Outcome
    reasons: tuple[str, ...] = ()
    detail: str = ""
    stats: Optional[AnswerStats] = None  # the answer's evidence for the per-miner test
    answer: Optional[AnswerRecord] = None  # what the miner sent, for replay: token ids, logprobs, chunk timings
    request: Optional[dict[str, Any]] = None  # what it was sent (a replayed user prompt cannot be rebuilt from the seed)

    @property
    def streamed(self) -> Optional[bool]:
        """For an answer long enough to judge: whether it was streamed (buffering evidence)."""
        return judged_streamed(self.outcome)

    def row(self, round_index: int) -> dict[str, Any]:
        """The result as the store's ``results`` row, by column name."""
        speed = self.outcome.speed
        return {
            "round": round_index,
            "uid": self.uid,
            "hotkey": self.hotkey,
            "family": self.family,
            "outcome": self.outcome.kind,
            "passed": None if self.outcome.fidelity_passed is None else int(self.outcome.fidelity_passed),
            "reasons": "; ".join(self.reasons) or self.detail or None,
            "correct": self.outcome.correct,
            "ttft": speed.ttft if speed else None,
            "tokens_per_s": speed.tokens_per_s if speed else None,
            "tokens": speed.tokens if speed else None,
            "streamed": None if self.streamed is None else int(self.streamed),
            "sent_at": self.outcome.sent_at,
            "done_at": self.outcome.done_at,
            "stats": json.dumps(asdict(self.stats)) if self.stats is not None else None,
            "answer": self.answer.model_dump_json() if self.answer is not None else None,
            "request": json.dumps(self.request) if self.request is not None else None,
        }


@dataclass(frozen=True)
class UserVerdict:
    """The verdict on one user's answer a gateway handed over (``validator.organic``): it counts like a
    challenge's — a failure zeroes the round, its evidence pools with the challenges'."""

    uid: int
    hotkey: str
    passed: bool
    reasons: str = ""
    stats: Optional[AnswerStats] = None


@dataclass(frozen=True)
class RoundInputs:
    """What a round is scored from besides its miners' answers: the state it starts from and what users saw.
    The live round, its replay and the network simulation build one each."""

    seed: int
    round_index: int = 0
    block: Optional[int] = None  # the head block: how long flags hold
    history: Mapping[str, Sequence[bool]] = field(default_factory=dict)  # hotkey → streamed flags of its judged answers in earlier rounds, oldest first
    evidence: Mapping[str, Evidence] = field(default_factory=dict)  # hotkey → its pooled evidence so far
    organic: Sequence[UserVerdict] = ()  # verdicts on users' answers, pooled with the challenges'
    service: Mapping[int, ServiceCounts] = field(default_factory=dict)  # uid → what the gateways saw it do for users since the last round
    sequential: SequentialParams = SequentialParams()  # the per-miner test (and how many challenges a suspect gets)


@dataclass
class RoundReport:
    seed: int
    results: list[Result] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)
    fidelity_failed: set[int] = field(default_factory=set)
    buffered: set[int] = field(default_factory=set)  # recent answers came in bursts: score 0, standing from zero
    evidence: dict[str, Evidence] = field(default_factory=dict)  # hotkey → its pooled evidence after the round
    flagged: set[int] = field(default_factory=set)  # the evidence says another model: weight 0 until it declares anew
    probed: dict[int, int] = field(default_factory=dict)  # uid → requests it was sent at once (its capacity probe)
    delivered: dict[int, float] = field(default_factory=dict)  # uid → verified tokens/s it delivered so
    serves: dict[int, int] = field(default_factory=dict)  # uid → streams it served at once at its model's best stream speed
    capacity: dict[int, float] = field(default_factory=dict)  # uid → delivered in streams at its model's reference speed (standings.apply_rewards)
