"""The subnet's model lists (``models/lists/NETWORK.json``, versioned in the repo) and the
hash of a list that the subnet owner publishes on chain, so every validator and gateway of
a subnet pays for and routes to the same models."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from pydantic import BaseModel, ConfigDict, Field

from chain.views import NeuronView
from protocol.commitment import ModelDeclaration

LISTS = Path(__file__).with_name("lists")
DEFAULT_LIST = LISTS / "localnet.json"
COMMITMENT_PREFIX = "slmnet-models"  # the owner's commitment: slmnet-models:VERSION:SHA256


DEFAULT_STREAM_SPEED = 100.0  # tokens/s of one stream on the reference hardware, for a model the list gives none


class SupportedModel(BaseModel):
    """One model of the list, as the list file spells it (unknown fields are refused: a typo is not a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    source: str = Field(description='"prepared:NAME" | "tiny:SEED" | a Hugging Face id')
    weights_sha256: Optional[str] = None
    max_context: int = Field(gt=0)
    end_token_ids: tuple[int, ...] = Field((), description="where the model ends a turn: the verifier's end-of-text checks")
    reward: float = Field(1.0, ge=0, description="multiplies a miner's round score: the subnet's say in which models it wants served")
    stream_tokens_per_s: float = Field(
        DEFAULT_STREAM_SPEED,
        gt=0,
        description="tokens/s one stream of this model gets on the subnet's reference hardware: capacity is paid in streams at this speed "
        "(a miner's verified tokens/s over it), so a token of a larger model counts for more than a tiny one's",
    )
    revision: Optional[str] = Field(None, description="the hub commit, for a Hugging Face id")
    dtypes: tuple[str, ...] = Field(("float32", "bfloat16", "float16"), description="the serving dtypes this model is paid for")

    def accepts(self, declaration: ModelDeclaration) -> bool:
        """A miner's declaration names this model in a paid dtype (and, where both give one, the same weights)."""
        if declaration.model != self.id or declaration.dtype not in self.dtypes:
            return False
        return not (self.weights_sha256 and declaration.weights_sha256 and declaration.weights_sha256 != self.weights_sha256)

    @property
    def from_hub(self) -> bool:
        return ":" not in self.source

    @property
    def pinned(self) -> bool:
        """Its weights are fixed: a hash, and a hub revision where it comes from the hub."""
        return bool(self.weights_sha256) and (self.revision is not None or not self.from_hub)


@dataclass(frozen=True)
class ModelList:
    version: int
    models: tuple[SupportedModel, ...]
    digest: str = ""  # sha256 of the list's canonical JSON: what the owner publishes
    path: Optional[Path] = None

    def get(self, model_id: str) -> Optional[SupportedModel]:
        return next((m for m in self.models if m.id == model_id), None)

    def serving(self, neurons: Iterable[NeuronView], own_hotkey: str) -> list[NeuronView]:
        """The miners to call: other hotkeys with an endpoint and a declaration this list accepts
        (what validators challenge and gateways route to)."""
        return [
            n
            for n in neurons
            if n.hotkey != own_hotkey
            and n.endpoint is not None
            and n.model is not None
            and (supported := self.get(n.model.model)) is not None
            and supported.accepts(n.model)
        ]

    @property
    def commitment(self) -> str:
        return f"{COMMITMENT_PREFIX}:{self.version}:{self.digest}"

    def unpinned(self) -> list[str]:
        return [m.id for m in self.models if not m.pinned]


@dataclass(frozen=True)
class Published:
    """The list the subnet owner published on chain."""

    version: int
    digest: str


class ModelListMismatch(Exception):
    """The local model list is not the one the subnet owner published."""


def for_network(network: str) -> Path:
    """The repo's list for a network: finney, test, or localnet (also any local node)."""
    name = network if network in ("finney", "test") else "localnet"
    return LISTS / f"{name}.json"


def canonical(raw: dict) -> bytes:
    return json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class _ListFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int
    comment: str = ""
    network: str = ""
    models: tuple[SupportedModel, ...]


def load(path: Path = DEFAULT_LIST) -> ModelList:
    try:
        raw = json.loads(Path(path).read_text())
        parsed = _ListFile.model_validate(raw)
        return ModelList(parsed.version, parsed.models, hashlib.sha256(canonical(raw)).hexdigest(), Path(path))
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"{path} is not a model list: {exc}") from exc


def dump(raw: dict) -> str:
    """A list's JSON as the repo keeps it: one model per line, so a diff shows which changed."""
    head = {k: v for k, v in raw.items() if k != "models"}
    lines = ",\n".join(f"    {json.dumps(m, ensure_ascii=False)}" for m in raw["models"])
    inner = json.dumps(head, indent=2, ensure_ascii=False)[:-2]
    return f'{inner},\n  "models": [\n{lines}\n  ]\n}}\n'


def parse_published(text: Optional[str]) -> Optional[Published]:
    """The owner's commitment as a published list, or None when it is not one."""
    parts = (text or "").split(":")
    if len(parts) != 3 or parts[0] != COMMITMENT_PREFIX or not parts[1].isdigit() or len(parts[2]) != 64:
        return None
    return Published(int(parts[1]), parts[2])


def check_published(models: ModelList, published: Optional[Published], network: str) -> Optional[str]:
    """ModelListMismatch when the chain wants another list; a warning when it names none."""
    if published is None:
        return f"the owner of this subnet on {network} has published no model list: using {models.path} (version {models.version}) unchecked"
    if published.digest != models.digest:
        raise ModelListMismatch(
            f"the model list {models.path} (version {models.version}, sha256 {models.digest[:12]}…) is not the one the subnet owner published "
            f"(version {published.version}, sha256 {published.digest[:12]}…): update slmnet (slmnet update) or pass the published list with --model-list"
        )
    return None


def check_graph(graph, models: ModelList, network: str) -> Optional[str]:
    """``check_published`` against what the subnet's owner committed, as a metagraph (chain.MetagraphView) shows it."""
    return check_published(models, parse_published(graph.owner_commitment), network)
