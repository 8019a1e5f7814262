"""Reading a server-sent-event stream the way a careful client does."""

from __future__ import annotations

import json

import aiohttp


async def read_sse(response: aiohttp.ClientResponse) -> tuple[list[dict], bool, int]:
    """(events, whether [DONE] ended the stream, number of network chunks)."""
    raw, chunks = b"", 0
    async for chunk in response.content.iter_any():
        raw += chunk
        chunks += 1
    frames = [f.strip().removeprefix(b"data: ") for f in raw.split(b"\n\n") if f.strip()]
    done = bool(frames) and frames[-1] == b"[DONE]"
    return [json.loads(f) for f in frames if f != b"[DONE]"], done, chunks
