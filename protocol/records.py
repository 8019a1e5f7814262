"""Records that cross processes: one model each, written and read by name on both sides.

``AnswerRecord`` is one miner's answer as it leaves the process that received it: the
gateway writes a sampled user answer into its organic outbox for a validator to verify, and
the validator stores each challenge answer with its round for ``slmnet validator replay``.
Both are read back through this model, so a field renamed on one side fails loudly on the
other instead of reading as missing.

The hand-over between a gateway and its validator, which need not share a disk, is two
records over signed HTTP (``gateway.handover``): ``OrganicSample`` (a sampled user answer
with the request it answered, gateway → validator) and ``MinerVerdict`` (what the
validator's evidence says of a miner now, validator → gateway, which stops routing users to
a flagged or failing miner at once and verifies more of a suspect one's answers).
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from protocol.responses import StreamFold


class AnswerRecord(BaseModel):
    """One answer (``n`` = 1) as its miner sent it, already validated where it entered: what a validator
    verifies, from its own challenge, a gateway's sample or a stored round alike."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_token_ids: Optional[list[int]] = None
    token_ids: list[int] = Field(default_factory=list)
    logprobs: list[Optional[float]] = Field(default_factory=list, description="the miner's logprob of each token id (None where it sent none)")
    text: str = ""
    finish_reason: Optional[str] = None
    completion_tokens: Optional[int] = Field(None, description="the miner's own count (usage), checked against the ids")
    chunks: Optional[list[tuple[float, int]]] = Field(
        None, description="(seconds after the request left, tokens) per chunk, as the validator timed them: a replay's speeds equal the round's"
    )
    error: Optional[str] = Field(None, max_length=1024, description="the error event that ended the stream, if one did")

    @classmethod
    def from_fold(cls, fold: StreamFold) -> "AnswerRecord":
        return cls(
            prompt_token_ids=fold.prompt_token_ids,
            token_ids=list(fold.token_ids),
            logprobs=[entry.logprob for entry in fold.logprobs],
            text=fold.text,
            finish_reason=fold.finish_reason,
            completion_tokens=fold.usage.completion_tokens if fold.usage else None,
            chunks=None,
            error=fold.error[:1024] if fold.error else None,
        )

    def reported(self) -> list[Optional[float]]:
        """The miner's logprob of each token id, None where it sent none."""
        return [*self.logprobs, *[None] * (len(self.token_ids) - len(self.logprobs))]


class ServiceCounts(BaseModel):
    """What gateways saw one miner do for their users over a span (running totals, or what
    changed between two reads): the inputs of its service factor (``validator.round_score.service_factor``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    served: int = Field(default=0, ge=0, description="answers (or parts of answers) it produced for users")
    refused: int = Field(default=0, ge=0, description="requests it answered 429 while the gateway had it under its declared capacity")
    failed: int = Field(default=0, ge=0, description="requests it failed: an error status, a broken stream, a stall, a disconnect")
    checked: int = Field(default=0, ge=0, description="health checks a gateway sent it while it declared a model the gateway serves")
    unreachable: int = Field(default=0, ge=0, description="of those, the ones it failed: no answer, a refused connection, a status other than 200")

    @model_validator(mode="before")
    @classmethod
    def _from_triple(cls, value: Any) -> Any:
        """Rounds stored before reachability was counted hold (served, refused, failed)."""
        if isinstance(value, (list, tuple)) and len(value) == 3:
            return dict(zip(("served", "refused", "failed"), value))
        return value

    def __add__(self, other: "ServiceCounts") -> "ServiceCounts":
        return ServiceCounts(**{name: getattr(self, name) + getattr(other, name) for name in ServiceCounts.model_fields})

    def since(self, before: "ServiceCounts") -> "ServiceCounts":
        """What changed since ``before`` (the same gateway's earlier read); all of it where a count went down (a new ledger)."""
        fields = ServiceCounts.model_fields
        if any(getattr(self, name) < getattr(before, name) for name in fields):
            return self
        return ServiceCounts(**{name: getattr(self, name) - getattr(before, name) for name in fields})

    @property
    def empty(self) -> bool:
        return not any(getattr(self, name) for name in ServiceCounts.model_fields)


class RoundSummary(BaseModel):
    """One validator round as stored (its ``rounds`` row and a line of ``rounds.jsonl``): what a
    replay needs to rebuild it and what the logs show. Keys are uids."""

    model_config = ConfigDict(frozen=True)

    round: int
    block: int
    seed: str = Field(description="the round seed, in decimal: the challenges are rebuilt from it")
    seed_tempo: Optional[int] = Field(default=None, description="the tempo whose secret the seed mixes (committed on chain, then revealed)")
    miners: int
    challenges: int = Field(description="challenges per miner")
    targets: dict[int, tuple[str, str, str, str]] = Field(default_factory=dict, description="uid → (hotkey, model, dtype, declaration) as queried")
    scores: dict[int, float] = Field(default_factory=dict)
    fidelity_failed: list[int] = Field(default_factory=list)
    buffered: list[int] = Field(default_factory=list)
    flagged: list[int] = Field(default_factory=list)
    effective: dict[int, float] = Field(default_factory=dict, description="the standing weights are set from, after the round")
    service: dict[int, ServiceCounts] = Field(
        default_factory=dict, description="uid → what the gateways it reads saw it do for users since the previous round, summed: the round's service factor"
    )
    service_seen: dict[str, dict[str, ServiceCounts]] = Field(
        default_factory=dict, description="gateway (its URL) → hotkey → that gateway's running counts at this round"
    )
    probed: dict[int, int] = Field(default_factory=dict, description="uid → requests sent to it at once: its capacity probe")
    delivered: dict[int, float] = Field(default_factory=dict, description="uid → verified tokens/s it delivered at that load")
    duration_s: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _one_gateway(cls, value: Any) -> Any:
        """Rounds stored when a validator read one gateway hold hotkey → counts: that gateway's, under no URL."""
        seen = value.get("service_seen") if isinstance(value, dict) else None
        if isinstance(seen, dict) and any(isinstance(counts, (list, tuple)) for counts in seen.values()):
            return {**value, "service_seen": {"": seen}}
        return value


class OrganicSample(BaseModel):
    """One user answer a gateway sampled for its validator: who answered, what it was asked, what it sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(description="the gateway's sequence number: a validator reads the samples after the last it read")
    uid: int
    hotkey: str
    model: str
    request: dict[str, Any] = Field(description="the body the miner was sent (``protocol.requests.miner_request``)")
    answer: AnswerRecord
    replayable: bool = Field(False, description="whether the gateway lets a validator replay the prompt to miners as a challenge")


def sample_from_row(row: tuple) -> OrganicSample:
    """A gateway's ``organic_samples`` row (id, uid, hotkey, model, request, answer, replayable) as a
    record; ValueError when it does not read as one (a gateway bug: the row is read past)."""
    row_id, uid, hotkey, model, request, answer, replayable = row
    try:
        return OrganicSample(
            id=row_id,
            uid=uid,
            hotkey=hotkey,
            model=model,
            request=json.loads(request),
            answer=AnswerRecord.model_validate_json(answer),
            replayable=bool(replayable),
        )
    except ValidationError as exc:
        raise ValueError(f"organic sample {row_id} is not an answer record: {exc.errors()[0]['msg']}") from exc


SAMPLE_COLUMNS = "id, uid, hotkey, model, request, answer, replayable"


class OrganicSamples(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: list[OrganicSample]
    skipped: list[int] = Field(default_factory=list, description="ids of rows that are not answer records (a gateway bug): read past")


class ServiceReport(ServiceCounts):
    """What one miner did for a gateway's users, counted since the gateway's ledger began."""

    hotkey: str
    tokens: int = Field(default=0, ge=0, description="completion tokens in the answers it served")

    def counts(self) -> ServiceCounts:
        return ServiceCounts(**{name: getattr(self, name) for name in ServiceCounts.model_fields})


class ServiceReports(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    miners: list[ServiceReport] = Field(max_length=65536)


class FamilyScore(BaseModel):
    """How a miner's verified answers to one family of checkable challenges graded, all rounds so far."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str = Field(min_length=1, max_length=64)
    answers: int = Field(ge=0, description="answers graded: the miner's answer passed verification and the family has a known answer")
    correct: int = Field(ge=0, description="of those, the answers that were right")

    @model_validator(mode="after")
    def _at_most_answers(self) -> "FamilyScore":
        if self.correct > self.answers:
            raise ValueError(f"{self.correct} correct of {self.answers} answers")
        return self


class MinerVerdict(BaseModel):
    """What one validator's evidence says of a miner now."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uid: int
    hotkey: str
    model: str
    standing: Literal["ok", "failing", "flagged"] = Field(
        description="failing: an answer failed verification this round; flagged: the pooled evidence says another model"
    )
    answers: int = Field(ge=0, description="answers its evidence pools (challenges and users'): few means new")
    evidence: float = Field(ge=0, description="the evidence's CUSUM over the flagging threshold: 1 flags")
    serves: Optional[int] = Field(
        default=None, ge=1, description="streams it served at once at its model's best speed in its last capacity probe: the gateway admits no more"
    )
    quality: list[FamilyScore] = Field(
        default_factory=list, max_length=64, description="its graded answers on the model it serves now, by task family (what auto routing learns from)"
    )


class MinerVerdicts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    round: int
    verdicts: list[MinerVerdict] = Field(max_length=65536)
