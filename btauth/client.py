"""Calling a miner: requests signed with btauth/1 for the miner's hotkey.

Validators, the gateway, benchmarks and scripts use this; the miner accepts nothing
else. Sign with the hotkey keypair (``wallet.hotkey``), not the Wallet, which re-reads
its keyfile on every signature. Each call signs a fresh nonce, so retries are safe.
"""

from __future__ import annotations

import json
from typing import Any, AsyncGenerator, AsyncIterator, Optional

import aiohttp
import bittensor as bt

from protocol.responses import Chunk, StreamFold
from protocol.sse import SseLimits, StreamViolation, sse_batches, sse_data


def signed_headers(keypair: Any, receiver: str, method: str, path: str, body: bytes = b"", nonce_ns: Optional[int] = None) -> dict[str, str]:
    headers = bt.http_auth.sign(keypair, method=method, path=path, body=body, receiver_ss58=receiver, nonce_ns=nonce_ns)
    if body:
        headers["Content-Type"] = "application/json"
    return headers


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


class MinerClient:
    """Signed calls to one miner at ``url`` whose hotkey is ``receiver``."""

    def __init__(self, session: aiohttp.ClientSession, url: str, keypair: Any, receiver: str):
        self.session = session
        self.url = url.rstrip("/")
        self.keypair = keypair
        self.receiver = receiver

    def post(self, path: str, payload: dict[str, Any], **kwargs: Any) -> Any:
        """``session.post`` with a signed JSON body; use as ``async with client.post(...) as r``."""
        body = json.dumps(payload).encode()
        return self.session.post(self.url + path, data=body, headers=signed_headers(self.keypair, self.receiver, "POST", path, body), **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.session.get(self.url + path, headers=signed_headers(self.keypair, self.receiver, "GET", path), **kwargs)
