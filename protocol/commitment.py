"""What a hotkey publishes as its on-chain commitment: a miner's model declaration, or a node's role and round seeds.

The chain stores at most 3 × 128 bytes per commitment, so each is compact JSON.
Validators and gateways read a miner's to know which model it claims to serve, in
which dtype, and how much load it accepts; validators read a gateway's (with the
endpoint it serves) to find every gateway whose users' service they read; anyone reads a
validator's to check and replay its rounds' seeds.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

COMMITMENT_VERSION = 1
Dtype = Literal["float32", "bfloat16", "float16"]  # what a miner computes in
MAX_COMMITMENT_BYTES = 384


class CommitmentDecodeError(ValueError):
    """A commitment is not a model declaration this version understands."""


class ModelDeclaration(BaseModel):
    """What a miner serves, as declared on chain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="Model id, e.g. a Hugging Face repo id", min_length=1, max_length=96)
    revision: str | None = Field(default=None, description="Hub revision (commit hash or tag)", max_length=64)
    weights_sha256: str | None = Field(default=None, description="sha256 of the served weight files, hex", pattern=r"^[0-9a-f]{64}$")
    max_context: int = Field(description="Maximum context length in tokens", gt=0)
    capacity: int = Field(description="Concurrent requests the miner accepts", gt=0)
    # The dtype the miner computes in: the verifier judges its drift with that dtype's tolerance
    # (scoring.evidence.TOLERANCES), and the model list says which dtypes each model is paid for.
    dtype: Dtype = Field(default="bfloat16", description="Serving dtype")
    v: int = Field(default=COMMITMENT_VERSION, description="Declaration format version")

    def to_commitment(self) -> str:
        """The text to publish; ValueError if it exceeds what the chain stores."""
        text = json.dumps(self.model_dump(exclude_none=True), separators=(",", ":"), sort_keys=True)
        if len(text.encode()) > MAX_COMMITMENT_BYTES:
            raise ValueError(f"model declaration is {len(text.encode())} bytes; the chain stores {MAX_COMMITMENT_BYTES}")
        return text

    @classmethod
    def from_commitment(cls, text: str) -> "ModelDeclaration":
        try:
            declaration = cls.model_validate(json.loads(text))
        except (ValueError, ValidationError) as exc:
            raise CommitmentDecodeError(f"not a model declaration: {exc}") from exc
        if declaration.v != COMMITMENT_VERSION:
            raise CommitmentDecodeError(f"declaration version {declaration.v} is not {COMMITMENT_VERSION}")
        return declaration


class SeedCommitment(BaseModel):
    """A validator's round seeds, committed before it uses them and revealed after. Each tempo's seeds mix a
    secret of that tempo (``validator.challenges.tempo_secret``) with block hashes: a miner cannot compute its
    challenges from public values, and once ``revealed`` anyone can recompute the tempo's seeds, check them
    against ``next`` as it stood, and replay the rounds; the validator cannot pick a secret after the fact."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tempo: int = Field(ge=0, description="The tempo (block // (tempo + 1)) whose secret ``next`` commits to")
    next: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of that tempo's secret, hex")
    revealed_tempo: int | None = Field(default=None, ge=0, description="The tempo of the secret revealed")
    revealed: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="That secret, hex: committed before as a tempo's next")


class NodeCommitment(BaseModel):
    """What a validator's or gateway's hotkey commits: its role (a gateway at the endpoint the hotkey serves) and
    its round seeds. A validator and a gateway may share a hotkey, so each writes its part and keeps the other's
    (``with_part``). A validator reads every declared gateway whose hotkey it trusts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["gateway"] | None = None
    seeds: SeedCommitment | None = None
    v: int = Field(default=COMMITMENT_VERSION, description="Format version")

    def to_commitment(self) -> str:
        text = json.dumps(self.model_dump(exclude_none=True), separators=(",", ":"), sort_keys=True)
        if len(text.encode()) > MAX_COMMITMENT_BYTES:
            raise ValueError(f"commitment is {len(text.encode())} bytes; the chain stores {MAX_COMMITMENT_BYTES}")
        return text

    @classmethod
    def of(cls, text: str | None) -> "NodeCommitment | None":
        """The commitment ``text`` as this version's (an empty one where there is none); None when it holds something
        else — the owner's model list, a miner's declaration, another format — which a node must not write over."""
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            parsed = cls.model_validate(raw) if isinstance(raw, dict) else None
        except (ValueError, ValidationError):
            return None
        return parsed if parsed is not None and parsed.v == COMMITMENT_VERSION else None

    @classmethod
    def declares_gateway(cls, text: str | None) -> bool:
        """Whether a commitment declares a gateway (this version's)."""
        parsed = cls.of(text)
        return parsed is not None and parsed.role == "gateway"

    @classmethod
    def with_part(cls, text: str | None, **part: object) -> "str | None":
        """The commitment ``text`` with ``part`` set (``role=``, ``seeds=``) and every other part kept: what to commit
        (equal to ``text`` when it already says so); None when ``text`` is not a node's commitment to write over."""
        parsed = cls.of(text)
        return None if parsed is None else cls.model_validate({**parsed.model_dump(), **part}).to_commitment()
