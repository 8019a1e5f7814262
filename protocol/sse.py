"""Server-sent events decoded as the WHATWG spec says, with size limits: the one reader of miners' streams.

Lines end in CRLF, LF or CR; a line starting with ``:`` is a comment; ``data:`` takes the
rest of the line with one leading space dropped (``data:x`` and ``data: x`` are the same);
several ``data`` lines of one event are joined with ``\\n``; a blank line dispatches the
event; an event with no data is not dispatched; a last event with no blank line after it
is dropped (the spec's rule: a cut stream does not deliver a half event). Fields other
than ``data`` (``event``, ``id``, ``retry``) are read and ignored.

Everything here is untrusted input from a miner: bytes that are not UTF-8, an event over
``max_event_bytes`` or a stream over ``max_stream_bytes`` raise ``StreamViolation`` at once,
before the rest is read, so an endless or huge stream costs the reader a bounded amount.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator

MAX_EVENT_BYTES = 256 * 1024  # a chunk of a few tokens with top logprobs is ~2 KiB
MAX_STREAM_BYTES = 32 * 1024 * 1024  # 8k tokens × 20 top logprobs is ~10 MiB
# What a server sends with a stream (the miner to its callers, the gateway to users): no caching,
# and no buffering by a reverse proxy (nginx honours X-Accel-Buffering) that would turn it into a burst.
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class StreamViolation(Exception):
    """The stream broke the protocol (not a network failure): the sender's fault. ``reason`` says how."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SseLimits:
    max_event_bytes: int = MAX_EVENT_BYTES
    max_stream_bytes: int = MAX_STREAM_BYTES


class SseDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, get back the data of each complete event."""

    def __init__(self, limits: SseLimits = SseLimits()):
        self.limits = limits
        self._pending = b""  # bytes after the last line end
        self._data: list[str] = []
        self._event_bytes = 0
        self._stream_bytes = 0
        self._cr = False  # the last byte fed was a CR: an LF right after it ends nothing more

    def feed(self, chunk: bytes) -> list[str]:
        self._stream_bytes += len(chunk)
        if self._stream_bytes > self.limits.max_stream_bytes:
            raise StreamViolation(f"the stream is over {self.limits.max_stream_bytes} bytes")
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = chunk.endswith(b"\r")
        buffer = self._pending + chunk
        lines = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) + self._event_bytes > self.limits.max_event_bytes:
            raise StreamViolation(f"an event is over {self.limits.max_event_bytes} bytes")
        events = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, raw: bytes) -> str | None:
        if not raw:
            data, self._data, self._event_bytes = self._data, [], 0
            return "\n".join(data) if data else None
        self._event_bytes += len(raw) + 1
        if self._event_bytes > self.limits.max_event_bytes:
            raise StreamViolation(f"an event is over {self.limits.max_event_bytes} bytes")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StreamViolation(f"the stream is not UTF-8: {exc}") from exc
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


async def sse_data(chunks: AsyncIterable[bytes], limits: SseLimits = SseLimits()) -> AsyncIterator[str]:
    """The data of each event in a byte stream, as events complete."""
    async for batch in sse_batches(chunks, limits):
        for data in batch:
            yield data


async def sse_batches(chunks: AsyncIterable[bytes], limits: SseLimits = SseLimits()) -> AsyncIterator[list[str]]:
    """``sse_data`` a read at a time: the data of the events each chunk of bytes completed
    (chunks that complete none yield nothing), for a relay that passes a burst on in one write."""
    decoder = SseDecoder(limits)
    async for chunk in chunks:
        if batch := decoder.feed(chunk):
            yield batch
