"""What comes back from a miner, as wire models: stream chunks, usage, error events, and their fold.

Every field the validator or the gateway relies on is typed and range-checked where it
enters; fields nobody reads (``system_fingerprint``, vLLM's ``stop_reason``…) are dropped,
so nothing a miner adds reaches a user. The models are ``msgspec`` Structs: a chunk is read
and checked straight from its JSON by a compiled decoder (~0.6 µs a chunk where pydantic
took ~3 µs: every token of every answer passes here). ``parse_event`` turns one SSE data
string into a model or raises ``StreamViolation``; ``StreamFold`` folds the events of one
answer and enforces what holds across events (one kind of chunk, ``n`` = 1, no token after
the end, no more token ids than asked for, one logprob entry per token id, ``[DONE]`` last).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

import msgspec

from protocol.sse import StreamViolation

MAX_TOKEN_ID = 2**31 - 1
FinishReason = Literal["stop", "length"]  # what an engine serving slmnet's requests ends with (no tools)
Text = Annotated[str, msgspec.Meta(max_length=1024)]
Name = Annotated[str, msgspec.Meta(max_length=256)]
# ≤ 0 up to float rounding, finite (vLLM writes -inf as -9999.0)
Logprob = Annotated[float, msgspec.Meta(ge=-1e300, le=1e-4)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKEN_ID)]


class MinerWireModel(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every model of a miner's output: unknown fields are dropped, never passed on."""


class TopLogprob(MinerWireModel, frozen=True, kw_only=True):
    token: Text
    logprob: Logprob
    bytes: Optional[Annotated[list[int], msgspec.Meta(max_length=1024)]] = None


class LogprobEntry(TopLogprob, frozen=True, kw_only=True):
    top_logprobs: Annotated[list[TopLogprob], msgspec.Meta(max_length=20)] = []


class ChoiceLogprobs(MinerWireModel, frozen=True, kw_only=True):
    content: Optional[list[LogprobEntry]] = None


class Delta(MinerWireModel, frozen=True, kw_only=True):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class Usage(MinerWireModel, frozen=True, kw_only=True):
    prompt_tokens: Count
    completion_tokens: Count
    total_tokens: Count


class ChunkChoice(MinerWireModel, frozen=True, kw_only=True):
    index: Literal[0]  # slmnet asks for n = 1
    finish_reason: Optional[FinishReason] = None
    token_ids: Optional[list[int]] = None  # the tokens this chunk adds (return_token_ids)


class ChatChunkChoice(ChunkChoice, frozen=True, kw_only=True):
    delta: Delta
    logprobs: Optional[ChoiceLogprobs] = None


class TextLogprobs(MinerWireModel, frozen=True, kw_only=True):
    tokens: list[str] = []
    token_logprobs: list[Optional[float]] = []
    top_logprobs: Optional[list[Optional[dict[str, float]]]] = None
    text_offset: list[int] = []

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if len(self.token_logprobs) != n or len(self.text_offset) != n or (self.top_logprobs is not None and len(self.top_logprobs) != n):
            raise ValueError("tokens, token_logprobs, top_logprobs and text_offset differ in length")


class TextChunkChoice(ChunkChoice, frozen=True, kw_only=True):
    text: str = ""
    logprobs: Optional[TextLogprobs] = None


class CompletionChunk(MinerWireModel, frozen=True, kw_only=True):
    id: Name = ""
    created: int = 0
    model: Name = ""
    usage: Optional[Usage] = None
    prompt_token_ids: Optional[list[int]] = None


class ChatCompletionChunk(CompletionChunk, frozen=True, kw_only=True):
    object: Literal["chat.completion.chunk"]
    choices: Annotated[list[ChatChunkChoice], msgspec.Meta(max_length=1)]


class TextCompletionChunk(CompletionChunk, frozen=True, kw_only=True):
    object: Literal["text_completion"]
    choices: Annotated[list[TextChunkChoice], msgspec.Meta(max_length=1)]


class ErrorDetail(MinerWireModel, frozen=True, kw_only=True):
    message: Annotated[str, msgspec.Meta(max_length=4096)]
    type: Optional[Name] = None
    code: Union[str, int, None] = None


class ErrorEvent(MinerWireModel, frozen=True, kw_only=True):
    """An engine's own report that the answer failed (vLLM sends one instead of more chunks)."""

    error: ErrorDetail


Chunk = Union[ChatCompletionChunk, TextCompletionChunk]
Event = Union[ChatCompletionChunk, TextCompletionChunk, ErrorEvent]
DONE = "[DONE]"
DECODERS: dict[type, msgspec.json.Decoder[Chunk]] = {wire: msgspec.json.Decoder(wire) for wire in (ChatCompletionChunk, TextCompletionChunk)}


def parse_event(data: str, chat: bool) -> Event:
    """One SSE data string of a chat (``chat``) or text completion stream; StreamViolation if it is not one."""
    chunk: type[Chunk] = ChatCompletionChunk if chat else TextCompletionChunk
    if '"error"' not in data:  # a chunk, as nearly every event is: read and checked in one compiled pass
        try:
            return DECODERS[chunk].decode(data)
        except (msgspec.ValidationError, RecursionError):
            pass  # not a valid chunk: the reading below names what is wrong with it
        except msgspec.DecodeError as exc:
            raise StreamViolation(f"an event is not JSON: {data[:80]!r}") from exc
    try:
        raw = msgspec.json.decode(data)
    except RecursionError as exc:
        raise StreamViolation("an event is nested too deeply") from exc
    except msgspec.DecodeError as exc:
        raise StreamViolation(f"an event is not JSON: {data[:80]!r}") from exc
    if not isinstance(raw, dict):
        raise StreamViolation(f"an event is a JSON {_JSON_KINDS.get(type(raw), type(raw).__name__)}, not an object")
    wire: type[Event] = ErrorEvent if "error" in raw else chunk
    try:
        return msgspec.convert(raw, wire)
    except msgspec.ValidationError as exc:
        raise StreamViolation(f"an event is not a valid {wire.__name__}: {exc}") from exc


_JSON_KINDS = {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def token_id_of(token: str) -> Optional[int]:
    """The id a logprob entry names (``token_id:N``, as every request asks: ``return_tokens_as_token_ids``); None for anything else."""
    head, _, digits = token.partition(":")
    return int(digits) if head == "token_id" and digits.isdigit() and len(digits) <= 10 else None


def _named_by_ids(tokens: list[str], ids: list[int], alternatives: list[str]) -> None:
    """StreamViolation unless each token names the chunk's id at its place and each alternative names an id."""
    for index, token in enumerate(tokens):
        if token_id_of(token) != (ids[index] if index < len(ids) else None):
            raise StreamViolation(f"a logprob token that is not the chunk's token id as asked (token_id:N): {token[:40]!r}")
    if any(token_id_of(token) is None for token in alternatives):
        raise StreamViolation("a logprob alternative not named by its token id as asked (token_id:N)")


class StreamFold:
    """One answer (``n`` = 1) built from its events, checking what must hold across them.

    ``max_tokens`` bounds the token ids (an endless stream fails as soon as it passes it);
    ``logprobs`` says whether one logprob entry per token id was asked for.
    """

    def __init__(self, chat: bool, max_tokens: int, logprobs: bool = False):
        self.chat, self.max_tokens, self.logprobs_asked = chat, max_tokens, logprobs
        self.prompt_token_ids: Optional[list[int]] = None
        self.token_ids: list[int] = []
        self.logprobs: list[LogprobEntry] = []  # chat: one entry per token id
        self.text = ""
        self.finish_reason: Optional[str] = None
        self.usage: Optional[Usage] = None
        self.error: Optional[str] = None  # the miner's own error event (its message: for logs, never for users)
        self.done = False  # [DONE] arrived

    def add(self, data: str) -> Optional[Chunk]:
        """Fold in one event's data; the chunk (None for [DONE] and error events). StreamViolation on any breach."""
        if self.done:
            raise StreamViolation("an event came after [DONE]")
        if data == DONE:
            self.done = True
            return None
        event = parse_event(data, self.chat)
        if self.error is not None:
            raise StreamViolation("an event came after an error event")
        if isinstance(event, ErrorEvent):
            self.error = event.error.message
            return None
        if event.prompt_token_ids is not None:
            if self.prompt_token_ids is not None or self.token_ids:
                raise StreamViolation("prompt_token_ids came twice or after the answer began")
            self.prompt_token_ids = event.prompt_token_ids
        if event.usage is not None:
            self.usage = event.usage
        for choice in event.choices:
            self._choice(choice)
        return event

    def _choice(self, choice: Union[ChatChunkChoice, TextChunkChoice]) -> None:
        ids = choice.token_ids or []
        piece = choice.delta.content if isinstance(choice, ChatChunkChoice) else choice.text
        if self.finish_reason is not None and (ids or piece):
            raise StreamViolation("tokens came after the finish_reason")
        if any(not 0 <= i <= MAX_TOKEN_ID for i in ids):
            raise StreamViolation("a token id is negative or too large")
        self.token_ids += ids
        if len(self.token_ids) > self.max_tokens:
            raise StreamViolation(f"more token ids than max_tokens ({self.max_tokens})")
        self.text += piece or ""
        # Asked for, a chunk's logprobs are one per token id it sent, each naming that id, and its alternatives by id
        # (users read them spelled from ids; a chunk short of entries would leave a user's answer with fewer than it charges).
        named = 0
        if isinstance(choice, ChatChunkChoice) and choice.logprobs is not None:
            entries = choice.logprobs.content or []
            _named_by_ids([e.token for e in entries], ids, [top.token for e in entries for top in e.top_logprobs])
            self.logprobs += entries
            named = len(entries)
        elif isinstance(choice, TextChunkChoice) and choice.logprobs is not None:
            text = choice.logprobs
            _named_by_ids(text.tokens, ids, [key for top in text.top_logprobs or [] if top for key in top])
            named = len(text.tokens)
        if self.logprobs_asked and named != len(ids):
            raise StreamViolation(f"{named} logprob entries for a chunk's {len(ids)} token ids")
        if choice.finish_reason is not None:
            self.finish_reason = choice.finish_reason

    def close(self, require_done: bool = True) -> None:
        """The stream ended: StreamViolation unless the answer is whole and consistent."""
        if self.error is not None:
            return  # an engine that reports its failure is not a protocol breach; the caller decides
        if self.finish_reason is None:
            raise StreamViolation("the stream ended without a finish_reason")
        if require_done and not self.done:
            raise StreamViolation("the stream ended without [DONE]")
        if self.usage is not None and self.usage.total_tokens != self.usage.prompt_tokens + self.usage.completion_tokens:
            raise StreamViolation("usage.total_tokens is not prompt_tokens + completion_tokens")
