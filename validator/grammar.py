"""What a request's grammar allows at each place of an answer: the validator's copy of the grammar the miner's
engine decoded under (``protocol.structured``: xgrammar, built as vLLM's backend builds it)."""

from __future__ import annotations

from typing import Iterable, Union

import numpy as np
import xgrammar as xgr

from models.tokenizer import ModelTokenizer
from protocol.structured import ANY_WHITESPACE, SEPARATORS, Grammar

CACHE_BYTES = 64 << 20  # compiled grammars kept per model (a user's schema is usually sent many times)


class Allowed:
    """The tokens a grammar allows at one place, as its packed bitmask."""

    def __init__(self, words: np.ndarray):
        self.words = words

    def __contains__(self, token_id: int) -> bool:
        word = token_id >> 5
        return 0 <= word < len(self.words) and bool((int(self.words[word]) >> (token_id & 31)) & 1)


class GrammarBook:
    """One model's grammar compiler; ``walk`` follows an answer through a grammar."""

    def __init__(self, tokenizer: ModelTokenizer, end_token_ids: Iterable[int] = ()):
        self.vocab_size = tokenizer.size
        info = xgr.TokenizerInfo.from_huggingface(tokenizer.tokenizer, vocab_size=self.vocab_size)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True, cache_limit_bytes=CACHE_BYTES)
        self.stops = sorted(end_token_ids)  # vLLM's matcher ends on the request's stop ids, the model's end among them

    def walk(self, grammar: Grammar, token_ids: list[int], stop_token_ids: Iterable[int] = ()) -> Union[list[Allowed], str]:
        """The tokens allowed before each of ``token_ids`` (the request's ``stop_token_ids`` end it too); or why the answer left the grammar (its first
        token the grammar does not allow there, or a grammar that does not compile: an honest engine refuses it)."""
        _, schema = grammar
        try:
            compiled = self.compiler.compile_json_schema(schema, any_whitespace=ANY_WHITESPACE, separators=SEPARATORS)
        except (RuntimeError, ValueError) as exc:
            return f"the request's response_format does not compile ({str(exc)[:120]}): an honest engine refuses it"
        stops = sorted({*self.stops, *stop_token_ids})
        matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=stops or None)
        bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)
        allowed = []
        for position, token_id in enumerate(token_ids):
            if matcher.is_terminated():
                return f"token {token_id} at position {position} came after the response_format grammar ended"
            matcher.fill_next_token_bitmask(bitmask)
            here = Allowed(bitmask[0].numpy().view(np.uint32).copy())
            if token_id not in here or not matcher.accept_token(token_id):
                return f"token {token_id} at position {position} is not allowed there by the response_format grammar"
            allowed.append(here)
        return allowed
