"""Counting tokens with each model's own tokenizer: the gateway never trusts a miner's count.

Prompt tokens are the chat template's rendering of the conversation (with the generation
prompt), as the engine feeds it; completion tokens are the delivered text re-encoded,
plus one for the end-of-text token when the answer ended with ``stop`` (the engine counts
it too). Re-encoding text can differ from the sampled ids by a token where a word was
split unusually; that is the price of not trusting the miner, and it is charged in the
user's favour as often as not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from tokenizers.decoders import DecodeStream

from protocol.sse import StreamViolation


class TokenCounter:
    def __init__(self, folder: Union[str, Path]):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.fast = self.tokenizer.backend_tokenizer  # the Rust tokenizer: ~20 µs a call where the wrapper takes ~300

    def _count(self, text: str) -> int:
        return len(self.fast.encode(text, add_special_tokens=False).ids)

    def prompt(self, messages: Optional[list[dict[str, Any]]] = None, prompt: str = "") -> int:
        """A conversation as the chat template renders it, or a text prompt (the gateway takes one string)."""
        if messages is not None:
            return self._count(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        return self._count(prompt)


class TextBinding:
    """The text a miner's token ids spell, followed id by id as its stream arrives: a chunk whose
    text is not what its ids spell (or an id the model does not have) is a ``StreamViolation``
    before the user sees it. The ids are detokenized with the Rust tokenizer's ``DecodeStream``
    (≈ 1.3 µs an id), the incremental decoder vLLM itself streams with: an honest miner's text
    is the decoder's text, or a prefix of it (held-back bytes of an unfinished character, text
    held back while it might start a ``stop`` string)."""

    def __init__(self, counter: TokenCounter):
        self.fast = counter.fast
        self.vocab_size = counter.fast.get_vocab_size(with_added_tokens=True)
        self.stream = DecodeStream(skip_special_tokens=True)
        self.spelled = ""  # what the ids so far spell
        self.shown = 0  # characters of it the miner has shown

    def feed(self, token_ids: list[int], piece: Optional[str]) -> None:
        for token_id in token_ids:
            if not 0 <= token_id < self.vocab_size:
                raise StreamViolation(f"token id {token_id} is outside the model's vocabulary of {self.vocab_size}")
            try:
                self.spelled += self.stream.step(self.fast, token_id) or ""
            except Exception as exc:  # the Rust decoder's own error types are not exported
                raise StreamViolation(f"token id {token_id} cannot be detokenized: {exc}") from exc
        if piece:
            if self.spelled[self.shown : self.shown + len(piece)] != piece:
                raise StreamViolation("the text is not what the token ids spell")
            self.shown += len(piece)
