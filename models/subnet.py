"""The subnet's model list (``models/subnet_models.json``, versioned in the repo)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from chain.views import NeuronView
from protocol.commitment import ModelDeclaration

DEFAULT_LIST = Path(__file__).with_name("subnet_models.json")


@dataclass(frozen=True)
class SupportedModel:
    id: str
    source: str  # "prepared:NAME" | "tiny:SEED" | a Hugging Face id
    weights_sha256: Optional[str]
    max_context: int
    end_token_ids: tuple[int, ...] = ()  # where the model ends a turn: the verifier's end-of-text checks
    reward: float = 1.0  # multiplies a miner's round score: the subnet's say in which models it wants served

    def accepts(self, declaration: ModelDeclaration) -> bool:
        """A miner's declaration names this model (and, where both give one, the same weights)."""
        if declaration.model != self.id:
            return False
        return not (self.weights_sha256 and declaration.weights_sha256 and declaration.weights_sha256 != self.weights_sha256)


@dataclass(frozen=True)
class ModelList:
    version: int
    models: tuple[SupportedModel, ...]

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


def load(path: Path = DEFAULT_LIST) -> ModelList:
    try:
        raw = json.loads(Path(path).read_text())
        models = tuple(
            SupportedModel(
                m["id"],
                m["source"],
                m.get("weights_sha256"),
                int(m["max_context"]),
                tuple(int(t) for t in m.get("end_token_ids", ())),
                float(m.get("reward", 1.0)),
            )
            for m in raw["models"]
        )
        return ModelList(int(raw["version"]), models)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a model list: {exc}") from exc
