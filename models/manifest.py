"""The identity of a model folder: ``slmnet.json`` beside the weights.

A model folder built by ``slmnet models`` names the model it holds (the id a miner
declares on chain and a validator looks up), a revision, and the sha256 of its weight
files, so a miner pointed at a folder declares exactly what it serves.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

MANIFEST = "slmnet.json"


@dataclass(frozen=True)
class ModelManifest:
    id: str  # declared model id, also the name the engine serves it under
    revision: Optional[str]
    weights_sha256: str
    max_context: int

    def write(self, directory: Path) -> None:
        (Path(directory) / MANIFEST).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, directory: Path) -> Optional["ModelManifest"]:
        """The folder's manifest, or None when it has none (a plain Hugging Face folder)."""
        path = Path(directory) / MANIFEST
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path} is not a model manifest: {exc}") from exc


def weights_sha256(directory: Path) -> str:
    """sha256 over the folder's safetensors files, in name order (hex)."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.safetensors")):
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()
