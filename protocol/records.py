"""Records that cross processes: one model each, written and read by name on both sides.

``AnswerRecord`` is one miner's answer as it leaves the process that received it: the
gateway writes a sampled user answer into its organic outbox for a validator to verify, and
the validator stores each challenge answer with its round for ``slmnet validator replay``.
Both are read back through this model, so a field renamed on one side fails loudly on the
other instead of reading as missing.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from protocol.responses import StreamFold


class AnswerRecord(BaseModel):
    """One answer (``n`` = 1) as its miner sent it, already validated where it entered."""

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

    @classmethod
    def from_fold(cls, fold: StreamFold) -> "AnswerRecord":
        return cls(
            prompt_token_ids=fold.prompt_token_ids,
            token_ids=list(fold.token_ids),
            logprobs=[entry.logprob for entry in fold.logprobs],
            text=fold.text,
            finish_reason=fold.finish_reason,
            completion_tokens=fold.usage.completion_tokens if fold.usage else None,
        )


class RoundSummary(BaseModel):
    """One validator round as stored (its ``rounds`` row and a line of ``rounds.jsonl``): what a
    replay needs to rebuild it and what the logs show. Keys are uids."""

    model_config = ConfigDict(frozen=True)

    round: int
    block: int
    seed: str = Field(description="the round seed, in decimal: the challenges are rebuilt from it")
    miners: int
    challenges: int = Field(description="challenges per miner")
    targets: dict[int, tuple[str, str, str, str]] = Field(default_factory=dict, description="uid → (hotkey, model, dtype, declaration) as queried")
    scores: dict[int, float] = Field(default_factory=dict)
    fidelity_failed: list[int] = Field(default_factory=list)
    buffered: list[int] = Field(default_factory=list)
    flagged: list[int] = Field(default_factory=list)
    effective: dict[int, float] = Field(default_factory=dict, description="the standing weights are set from, after the round")
    duration_s: float = 0.0
