"""A model's tokenizer, and the one rule that binds a miner's text to its ids: the text is what the ids spell.

The rule lives here once and is driven two ways: id by id as a stream arrives (the gateway,
``TextBinding.feed`` on each chunk, before the user reads it) and over a whole answer (the
validator, ``binding_reasons``, before the reference scores it). Both decode with the Rust
tokenizer's ``DecodeStream`` — the incremental detokenizer vLLM itself streams with — so
they cannot judge the same answer differently.

An honest engine shows the decoder's text or a prefix of it: a stream holds back the bytes
of an unfinished UTF-8 character at its end (they decode as U+FFFD, ``HELD_BACK``), and a
``stop`` string ends the text before the tokens that spelled it. Nothing else may differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from tokenizers.decoders import DecodeStream

from protocol.responses import token_id_of
from protocol.sse import StreamViolation

HELD_BACK = "\ufffd"  # what the decoder shows for bytes a stream holds back


# Pre-tokenizers that only split the text (and ByteLevel, which maps each byte to one symbol): none adds a character
# a token could be made of, but ByteLevel's prefix space (``ModelTokenizer.bound`` counts one).
SPLITTING = {"ByteLevel", "Split", "Digits", "Punctuation", "Whitespace", "WhitespaceSplit", "BertPreTokenizer", "UnicodeScripts"}


def _bpe_of_bytes(fast: Any) -> bool:
    """Whether a (Rust) tokenizer is a BPE whose pre-tokenizers only split: the tokens of a text are then at most the
    bytes of its normalized form. (Read from its parts: the whole tokenizer as JSON is 12 MB for Gemma.)"""
    pre = None if fast.pre_tokenizer is None else json.loads(fast.pre_tokenizer.__getstate__())
    pres = [] if pre is None else pre.get("pretokenizers", [pre]) if pre["type"] == "Sequence" else [pre]
    return type(fast.model).__name__ == "BPE" and all(p["type"] in SPLITTING for p in pres)


class ModelTokenizer:
    """One model's tokenizer, loaded from its folder: which ids exist, what they spell, how many a text takes."""

    def __init__(self, folder: Union[str, Path]):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.fast = self.tokenizer.backend_tokenizer  # the Rust tokenizer: ~20 µs a call where the wrapper takes ~300
        self.size = self.fast.get_vocab_size(with_added_tokens=True)
        self.bounded = _bpe_of_bytes(self.fast)  # ``bound`` holds for it
        self.normalizer = self.fast.normalizer

    def count(self, text: str) -> int:
        return len(self.fast.encode(text, add_special_tokens=False).ids)

    def render(self, messages: Optional[list[dict[str, Any]]] = None, prompt: str = "") -> str:
        """What the engine feeds the model: a conversation as the chat template renders it (with the generation
        prompt), or a text prompt as it is."""
        if messages is not None:
            return str(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        return prompt

    def bound(self, text: str) -> Optional[int]:
        """At least the tokens ``text`` takes, without tokenizing it (a long prompt's count takes milliseconds):
        the bytes of its normalized form, + 1 for a prefix space a pre-tokenizer may add. Every token of a BPE
        spells at least one byte of that form (a byte-level or byte-fallback token one byte, any other at least one
        character), and a pre-tokenizer that only splits adds none. None where the tokenizer is not such a BPE."""
        if not self.bounded:
            return None
        normalized = text if self.normalizer is None else self.normalizer.normalize_str(text)
        return (len(normalized) if normalized.isascii() else len(normalized.encode("utf-8"))) + 1

    def token_text(self, token: str) -> tuple[int, str]:
        """A logprob entry's token as a miner sends it (``token_id:N``: requests ask for ids, never
        strings) → (N, what N spells alone, special tokens included, as vLLM names a token).
        StreamViolation for anything else: a token string is the miner's words, never the user's to read."""
        token_id = token_id_of(token)
        if token_id is None or token_id >= self.size:
            raise StreamViolation(f"a logprob token that is not one of the model's ids: {token[:40]!r}")
        return token_id, self.fast.decode([token_id], skip_special_tokens=False)

    def decode(self, token_ids: Sequence[int]) -> str:
        """What ``token_ids`` spell (special tokens skipped, as vLLM shows them)."""
        binding = TextBinding(self)
        binding.feed(token_ids, None)
        return binding.spelled


class PromptTokens:
    """A prompt's tokens for the checks made before a miner is asked: ``tokens`` is at first the tokenizer's bound
    where it gives one (a check that passes on it passes on the count), the count once ``count`` has run — when a
    check fails on the bound, or once the miner is asked, off the user's time."""

    def __init__(self, tokenizer: ModelTokenizer, text: str):
        self.tokenizer, self.text = tokenizer, text
        bound = tokenizer.bound(text)
        self.counted = bound is None
        self.tokens = tokenizer.count(text) if bound is None else bound

    def count(self) -> int:
        if not self.counted:
            self.tokens, self.counted = self.tokenizer.count(self.text), True
        return self.tokens


class TextBinding:
    """The text a miner's ids spell, followed id by id (≈ 1.3 µs an id): ``feed`` raises
    ``StreamViolation`` for an id the model does not have, or a piece of text that is not the
    next stretch of what the ids spell."""

    def __init__(self, tokenizer: ModelTokenizer):
        self.fast = tokenizer.fast
        self.size = tokenizer.size
        self.stream = DecodeStream(skip_special_tokens=True)
        self.spelled = ""  # what the ids so far spell
        self.shown = 0  # characters of it the miner has shown

    def feed(self, token_ids: Sequence[int], piece: Optional[str]) -> None:
        for token_id in token_ids:
            if not 0 <= token_id < self.size:
                raise StreamViolation(f"token id {token_id} is outside the model's vocabulary of {self.size}")
            try:
                self.spelled += self.stream.step(self.fast, token_id) or ""
            except Exception as exc:  # the Rust decoder's own error types are not exported
                raise StreamViolation(f"token id {token_id} cannot be detokenized: {exc}") from exc
        if piece:
            if self.spelled[self.shown : self.shown + len(piece)] != piece:
                raise StreamViolation(f"the text is not what the token ids spell (they spell {self.spelled[:60]!r})")
            self.shown += len(piece)

    def unshown(self, stop: Union[str, list[str], None]) -> str:
        """What the ids spell beyond the text shown, where an honest engine shows it all (empty
        when the rest is held-back bytes, or a ``stop`` string the engine cut before)."""
        rest = self.spelled[self.shown :]
        return "" if not rest.strip(HELD_BACK) or self.stopped_on(stop) else rest

    def stopped_on(self, stop: Union[str, list[str], None]) -> bool:
        """Whether the ids spell one of the ``stop`` strings right after the text shown: where an engine stopped on it."""
        rest = self.spelled[self.shown :]
        return any(rest.startswith(s) for s in ([stop] if isinstance(stop, str) else stop or []))


@dataclass(frozen=True)
class Bound:
    """A whole answer's ids held against its text."""

    reasons: list[str]  # why they do not belong together (empty: they do)
    on_stop: bool = False  # the ids spell one of the request's stop strings right after the text: the engine stopped on it


def binding_reasons(
    tokenizer: ModelTokenizer,
    token_ids: Sequence[int],
    text: str,
    stop: Union[str, list[str], None],
    prompt_length: int = 0,
    max_context: int = 1 << 30,
    ended_by: Optional[int] = None,
) -> Bound:
    """Why a whole answer's ids and text do not belong together: an id outside the vocabulary,
    more tokens than the context holds, or text that is not what the ids spell; and whether
    they show it stopped on a ``stop`` string. ``ended_by``: the answer's last id when it is one
    of the model's end tokens and the answer stopped on it; vLLM never shows an end token's
    text (nothing for a special token like ``<eos>``, but Gemma's answers end on a newline), so
    it spells nothing here either."""
    binding = TextBinding(tokenizer)
    outside = [i for i in token_ids if not 0 <= i < tokenizer.size]
    if outside:
        return Bound([f"{len(outside)} token id(s) outside the model's vocabulary of {tokenizer.size} (first {outside[0]})"])
    if prompt_length + len(token_ids) > max_context:
        return Bound([f"{prompt_length} prompt + {len(token_ids)} completion tokens exceed the model's context of {max_context}"])
    try:
        binding.feed(token_ids[:-1] if ended_by is not None and token_ids and token_ids[-1] == ended_by else token_ids, text)
    except StreamViolation as exc:
        return Bound([str(exc) + f", the miner showed {text[:60]!r}"])
    rest = binding.unshown(stop)
    return Bound([f"the text is not what the token ids spell (they spell {rest[:60]!r} more)"] if rest else [], binding.stopped_on(stop))
