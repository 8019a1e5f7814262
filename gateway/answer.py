"""One user's answer: what it holds while miners build it, and how the user is shown it.

Every chunk the user gets is rebuilt from the validated wire models field by field (only
what the user asked for: logprobs, token ids), so nothing a miner adds reaches a user; the
tokens logprobs name are spelled from their ids with the model's tokenizer, never copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from gateway.state import ENTROPY
from models.tokenizer import ModelTokenizer
from protocol import tools
from protocol.requests import miner_request
from protocol.responses import ChatChunkChoice, Chunk, StreamFold, TextChunkChoice, TextLogprobs
from protocol.structured import grammar_of


@dataclass
class Generation:
    """One user request's answer as it is built, possibly by several miners in turn."""

    chat: bool
    body: dict[str, Any]  # the user's request, validated
    model: str  # the model actually served
    max_tokens: int
    prompt_tokens: int  # counted with the model's tokenizer
    text: str = ""
    upstream_tokens: int = 0  # tokens the miners sent (for the budget of a continuation)
    finish_reason: Optional[str] = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # chat: one entry a token; text: one logprobs object a chunk
    token_ids: list[int] = field(default_factory=list)
    parts: list[list[Any]] = field(default_factory=list)  # [uid, hotkey, text chars at start, tokens at start]
    failovers: int = 0
    # The miner that finished the answer: the request it was sent (the user's, or the continuation of what an earlier
    # miner wrote) and its part as it sent it, whole (organic verification).
    finished_part: Optional[tuple[dict[str, Any], StreamFold]] = None
    usage: Optional[dict[str, Any]] = None  # counted once, when the answer is complete
    price: Optional[float] = None  # the key's price per million tokens: the answer's usage says its cost
    # Every miner is sent a seed (the user's, else one drawn here, 31 bits like a challenge's): its
    # sampling is then checkable (protocol.sampling), and users cannot be told from validators.
    seed: int = field(default_factory=ENTROPY.seed)
    message: Optional[tuple[dict[str, Any], Optional[str]]] = None  # a tool answer's, once the miner that finished it passed

    @property
    def calls_tools(self) -> bool:
        """Whether the answer is a tool call or content under the tool grammar (``protocol.tools``): the user
        reads it whole, turned into OpenAI's message, never as the JSON the model writes."""
        return tools.plan(self.body.get("tools") or [], self.body.get("tool_choice")) is not None

    def tool_message(self) -> tuple[dict[str, Any], Optional[str]]:
        """The answer as OpenAI's assistant message and finish reason (``protocol.tools.message_of``)."""
        return tools.message_of(self.text, self.finish_reason, self.body.get("tools") or [], self.body.get("tool_choice"))

    @property
    def continuable(self) -> bool:
        """Whether another miner can continue what one began: not under a grammar, which an engine applies from
        the answer's start (a continuation would restart it mid-JSON, and verify under it no more)."""
        return grammar_of(self.body) is None

    def restart(self) -> None:
        """Forget a whole answer the user has not seen yet, to ask the next miner for it afresh."""
        self.text, self.upstream_tokens, self.finish_reason = "", 0, None
        self.token_ids, self.logprobs, self.parts = [], [], []

    def mark(self) -> tuple[int, int, int]:
        """Where the answer stands before a miner adds to it (for ``rewind``)."""
        return self.upstream_tokens, len(self.token_ids), len(self.logprobs)

    def rewind(self, mark: tuple[int, int, int]) -> None:
        """Forget what a failed miner produced that the user never saw (ids whose text had not appeared yet)."""
        self.upstream_tokens = mark[0]
        del self.token_ids[mark[1] :], self.logprobs[mark[2] :]

    def upstream_body(self, from_start: bool = False) -> dict[str, Any]:
        """What the next miner is sent: the continuation of the text so far, or (``from_start``)
        the first miner's request, which its answer is verified against."""
        text, used = ("", 0) if from_start else (self.text, self.upstream_tokens)
        fields = dict(self.body)
        if text and self.chat:
            fields.update(messages=[*self.body["messages"], {"role": "assistant", "content": text}], continue_final_message=True, add_generation_prompt=False)
        elif text:
            fields["prompt"] = self.body["prompt"] + text
        # Logprobs always for a conversation, as challenges have them: miners cannot tell users from validators.
        return miner_request(fields, model=self.model, max_tokens=self.max_tokens - used, seed=self.seed)


@dataclass(frozen=True)
class Head:
    """What every part of one answer to one user carries: its id, creation time, and the generation."""

    id: str
    created: int
    gen: Generation

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.gen.chat else "text_completion"

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": self.chunk_object, "created": self.created, "model": self.gen.model, "choices": choices, **extra}


def _spelled(token: str, tokenizer: ModelTokenizer) -> dict[str, Any]:
    text = tokenizer.token_text(token)[1]
    return {"token": text, "bytes": list(text.encode("utf-8", errors="replace"))}


def chat_logprobs(choice: ChatChunkChoice, tokenizer: ModelTokenizer) -> list[dict[str, Any]]:
    """The choice's logprob entries as the user gets them: each token (and each top alternative)
    spelled from its id with the model's tokenizer (``StreamFold`` has checked that each names
    its id, the chunk's). StreamViolation for an id the model does not have."""
    entries = (choice.logprobs.content if choice.logprobs is not None else None) or []
    out = []
    for entry in entries:
        tops = [{**_spelled(top.token, tokenizer), "logprob": top.logprob} for top in entry.top_logprobs]
        out.append({**_spelled(entry.token, tokenizer), "logprob": entry.logprob, "top_logprobs": tops})
    return out


def text_logprobs(choice: TextChunkChoice, lp: TextLogprobs, tokenizer: ModelTokenizer, offset: int = 0) -> dict[str, Any]:
    """A text completion choice's logprobs ``lp`` with every token, and every top alternative's key, spelled from
    its id (``StreamFold`` has checked that each names one, the tokens the chunk's); ``offset``: characters of the
    answer before this miner's part (a continuation's offsets count from the user's answer's start)."""
    named = [tokenizer.token_text(t) for t in lp.tokens]
    tops = None if lp.top_logprobs is None else [None if t is None else {tokenizer.token_text(k)[1]: v for k, v in t.items()} for t in lp.top_logprobs]
    return {
        "tokens": [text for _, text in named],
        "token_logprobs": lp.token_logprobs,
        "top_logprobs": tops,
        "text_offset": [o + offset for o in lp.text_offset],
    }


def user_choice(head: Head, choice: Union[ChatChunkChoice, TextChunkChoice], continuing: bool, tokenizer: ModelTokenizer) -> dict[str, Any]:
    """A miner's choice as the user's chunk carries it."""
    body = head.gen.body
    if isinstance(choice, ChatChunkChoice):
        delta = {"content": choice.delta.content} if choice.delta.content is not None else {}
        if choice.delta.role is not None and not continuing:
            delta = {"role": choice.delta.role, **delta}
        logprobs = {"content": chat_logprobs(choice, tokenizer)} if body.get("logprobs") and choice.logprobs is not None else None
        out: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": choice.finish_reason}
    else:
        lp, offset = choice.logprobs, head.gen.parts[-1][2] if head.gen.parts else 0
        logprobs = text_logprobs(choice, lp, tokenizer, offset) if body.get("logprobs") is not None and lp is not None else None
        out = {"index": 0, "text": choice.text, "logprobs": logprobs, "finish_reason": choice.finish_reason}
    if body.get("return_token_ids"):
        out["token_ids"] = choice.token_ids
    return out


def user_chunk(head: Head, chunk: Chunk, continuing: bool, tokenizer: ModelTokenizer) -> Optional[dict[str, Any]]:
    """The user's chunk for a miner's (None for the usage chunk: the gateway's own count replaces it at the end)."""
    if not chunk.choices:
        return None
    extra = {}
    if head.gen.body.get("return_token_ids") and chunk.prompt_token_ids is not None and not continuing:
        extra["prompt_token_ids"] = chunk.prompt_token_ids
    return head.chunk([user_choice(head, c, continuing, tokenizer) for c in chunk.choices], **extra)


def whole_as_chunks(head: Head, whole: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole chat answer streamed as OpenAI streams one: its message in one delta, then its finish
    (tool calls carry an ``index``; their arguments come whole)."""
    choice = whole["choices"][0]
    delta = {k: v for k, v in choice["message"].items() if v is not None}
    if "tool_calls" in delta:
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(delta["tool_calls"])]
    return [
        head.chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]),
        head.chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}]),
    ]


def usage_chunk(head: Head, usage: dict[str, int]) -> dict[str, Any]:
    return head.chunk([], usage=usage)


def error_chunk(head: Head) -> dict[str, Any]:
    """The OpenAI stream convention for an answer that failed: a last chunk with finish_reason "error"."""
    return head.chunk([{"index": 0, **({"delta": {}} if head.gen.chat else {"text": ""}), "logprobs": None, "finish_reason": "error"}])


def whole_completion(head: Head, usage: dict[str, int]) -> dict[str, Any]:
    """The answer as one (non-streamed) completion object."""
    gen = head.gen
    if gen.message is not None:
        message, finish_reason = gen.message
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
    elif gen.chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": gen.text},
            "finish_reason": gen.finish_reason,
            "logprobs": {"content": gen.logprobs} if gen.body.get("logprobs") else None,
        }
    else:
        logprobs = None
        if gen.body.get("logprobs") is not None:  # the parts' logprobs, one object as OpenAI's text completions carry them
            logprobs = {key: [x for part in gen.logprobs for x in (part[key] or [])] for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
        choice = {"index": 0, "text": gen.text, "finish_reason": gen.finish_reason, "logprobs": logprobs}
    if gen.body.get("return_token_ids"):
        choice["token_ids"] = gen.token_ids
    return {
        "id": head.id,
        "object": "chat.completion" if gen.chat else "text_completion",
        "created": head.created,
        "model": gen.model,
        "choices": [choice],
        "usage": usage,
    }
