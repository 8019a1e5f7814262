"""What a hotkey publishes as its on-chain commitment: a miner's model declaration, or a gateway's role.

The chain stores at most 3 × 128 bytes per commitment, so each is compact JSON.
Validators and gateways read a miner's to know which model it claims to serve, in
which dtype, and how much load it accepts; validators read a gateway's (with the
endpoint it serves) to find every gateway whose users' service they read.
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


class GatewayDeclaration(BaseModel):
    """A gateway, as declared on chain: its endpoint is the one its hotkey serves. A validator reads
    every declared gateway whose hotkey holds a validator permit (stake stands behind what it reports)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["gateway"] = "gateway"
    v: int = Field(default=COMMITMENT_VERSION, description="Declaration format version")

    def to_commitment(self) -> str:
        return json.dumps(self.model_dump(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def declared_by(cls, text: str | None) -> bool:
        """Whether a commitment declares a gateway (this version's)."""
        try:
            raw = json.loads(text or "")
            return isinstance(raw, dict) and "role" in raw and cls.model_validate(raw).v == COMMITMENT_VERSION
        except (ValueError, ValidationError):
            return False
