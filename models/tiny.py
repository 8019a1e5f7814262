"""Tiny random language models for tests and development, built offline.

A Qwen2-architecture model (2 layers, hidden size 128, head size 64) with a byte-level BPE tokenizer
trained on text that ships with Python, and a ChatML chat template, saved as fp32
safetensors that transformers and vLLM load. Deterministic for a seed: the same seed
gives byte-identical files, so a test can declare a weights hash and check it.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path

from models.manifest import ModelManifest, weights_sha256

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Corpus for the tokenizer: docstrings of standard-library modules (fixed for a Python version).
_CORPUS_MODULES = ("string", "json", "re", "collections", "itertools", "functools", "random", "math", "textwrap", "difflib", "calendar", "statistics")


@dataclass(frozen=True)
class TinySpec:
    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    # head_dim = 128 / 2 = 64: vLLM's CPU attention refuses small head sizes (16 fails).
    num_heads: int = 2
    num_kv_heads: int = 1
    max_context: int = 2048
    # Weights ~ N(0, 0.6²): next-token distributions as peaked as a trained small model's
    # (median top-1 logprob ≈ −1.1, median gap to the second ≈ 0.85 nats), so verification
    # can tell models apart. At 0.05 the model is almost uniform (every logprob ≈ −6.1).
    init_std: float = 0.6


def _corpus() -> list[str]:
    texts = []
    for name in _CORPUS_MODULES:
        module = importlib.import_module(name)
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
            if doc:
                texts.append(doc)
    texts.append(" ".join(str(i) for i in range(1000)))  # digits and numbers for arithmetic tasks
    return texts


def build_tokenizer(spec: TinySpec):
    """A byte-level BPE tokenizer trained offline, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=spec.max_context,
    )


def build_tiny(out: Path, seed: int = 0, spec: TinySpec = TinySpec()) -> str:
    """Write a tiny model to ``out``; returns the sha256 of its weights file."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec)
    tokenizer.save_pretrained(out)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_context,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        bos_token_id=None,
        torch_dtype="float32",  # type: ignore[call-arg]  # transformers 5 still reads it; the stubs name it dtype
    )
    generator = torch.Generator().manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            param.copy_(torch.randn(param.shape, generator=generator) * spec.init_std)
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    digest = weights_sha256(out)
    ModelManifest(id=f"slmnet/tiny-qwen2-s{seed}", revision=None, weights_sha256=digest, max_context=spec.max_context).write(out)
    return digest
