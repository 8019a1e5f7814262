"""Reading server-sent event streams off an aiohttp response: an engine's of our own (``sse_events``), and a
miner's, every chunk validated and folded as it arrives (``miner_chunks``, ``miner_chunk_batches``).

The parsing and its limits live in ``protocol.sse``, each chunk's checks in ``protocol.responses``; this binds
them to a response, for whoever reads a stream: the validator, the gateway, benches and the test harness.
"""

from __future__ import annotations

import json
from typing import Any, AsyncGenerator, AsyncIterator

import aiohttp

from protocol.responses import Chunk, StreamFold
from protocol.sse import SseLimits, StreamViolation, sse_batches, sse_data


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of a stream from an engine we run ourselves (benches, harness), as they
    arrive, read to the end of the body (not just to ``[DONE]``): a caller that stops early hangs
    up before the server has finished the request, and would meet its own request still counted
    in flight. A miner's stream is read with ``miner_chunks`` instead."""
    async for data in sse_data(response.content.iter_any()):
        if data != "[DONE]":
            yield json.loads(data)


async def miner_chunks(response: aiohttp.ClientResponse, fold: StreamFold, limits: SseLimits = SseLimits()) -> AsyncIterator[Chunk]:
    """A miner's completion stream, each chunk validated and folded into ``fold`` as it arrives,
    read to the end of the body; ``StreamViolation`` the moment the miner breaks the protocol
    (wrong content type, bad event, too big, tokens past the end…). The caller checks
    ``fold.close()`` when it ends."""
    # Each event is folded as the caller takes it, not a read at a time: the validator stamps each
    # chunk's arrival as it takes it, and its burst rule is calibrated on that (docs/calibration.md).
    _expect_sse(response)
    async for data in sse_data(response.content.iter_any(), limits):
        if (chunk := fold.add(data)) is not None:
            yield chunk


async def miner_chunk_batches(response: aiohttp.ClientResponse, fold: StreamFold, limits: SseLimits = SseLimits()) -> AsyncGenerator[list[Chunk], None]:
    """``miner_chunks`` a network read at a time: the chunks that arrived together, together, so
    a relay can pass them on in one write (one system call for a burst, not one per chunk).
    ``StreamViolation`` comes as soon as a bad event is read, before its batch is yielded: the
    chunks before it in that read are folded into ``fold`` but not yielded."""
    _expect_sse(response)
    async for events in sse_batches(response.content.iter_any(), limits):
        if batch := [chunk for chunk in map(fold.add, events) if chunk is not None]:
            yield batch


def _expect_sse(response: aiohttp.ClientResponse) -> None:
    if response.content_type != "text/event-stream":
        raise StreamViolation(f"a stream answered with Content-Type {response.content_type!r}")
