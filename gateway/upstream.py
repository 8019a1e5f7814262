"""Calling one miner: a signed streamed request, its chunks validated as they arrive, every failure a MinerFailed.

Every completion is streamed from the miner (whatever the user asked), signed with the
gateway's hotkey. One deadline covers the connection, the headers and the first token
(``first_token_timeout``), then the time between tokens (``stall_timeout``): bytes and
chunks that carry no token do not move it; it is suspended while the caller writes to the user.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncGenerator, Callable, Literal, Optional

import aiohttp

from gateway.router import MinerView
from gateway.state import GatewayState
from protocol.responses import Chunk, StreamFold
from protocol.sse import StreamViolation
from protocol.streams import miner_chunk_batches
from signed.client import MinerClient

FailureKind = Literal["busy", "http_status", "connection", "error_event", "stalled", "violation"]


class MinerFailed(Exception):
    """What went wrong with one miner for one request: its ``kind`` labels the metrics, ``detail`` goes to logs only."""

    def __init__(self, kind: FailureKind, detail: str, status: Optional[int] = None):
        self.kind, self.detail, self.status = kind, detail, status
        super().__init__(f"{self.what}: {detail}")

    @property
    def what(self) -> str:
        """The kind, with the HTTP status where there is one ("http_status 500")."""
        return self.kind if self.status is None else f"{self.kind} {self.status}"

    @property
    def busy(self) -> bool:
        """It answered 429: at capacity, not broken."""
        return self.kind == "busy"

    @property
    def refused_request(self) -> bool:
        """It refused the request itself: a 4xx other than 429, or an engine's error event (the engine took the body
        as malformed, or failed on its values, as vLLM reports some after its 200). The caller counts it only before
        any token: then it is the user's fault when every miner that tried the request did the same, the miner's
        when another served it."""
        return (self.status is not None and 400 <= self.status < 500 and not self.busy) or self.kind == "error_event"


async def miner_events(
    state: GatewayState, miner: MinerView, body: dict[str, Any], fold: StreamFold, got_tokens: Callable[[], bool]
) -> AsyncGenerator[list[Chunk], None]:
    """One miner's chunks, validated and folded into ``fold``, in batches of those that arrived
    together (``miner_chunk_batches``); MinerFailed for anything the miner
    did wrong: an error status (any: the gateway sent a request it validated), a stream that
    breaks the protocol or reports an error, a stall in any phase, a disconnect, no finish."""
    client = MinerClient(state.session, miner.url, state.keypair, miner.hotkey)
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=state.settings.connect_timeout)
    wait = state.settings.first_token_timeout
    loop = asyncio.get_running_loop()
    progress_at, tokens = loop.time(), 0  # when the miner last sent a token: chunks without one (a drip of empty deltas) buy it no time
    try:
        # One deadline, moved on when tokens arrive (a timer reschedule; wait_for per event cost 20 µs each).
        async with asyncio.timeout(wait) as deadline:
            async with client.post(path, body, timeout=timeout) as response:
                if response.status != 200:
                    raise MinerFailed(
                        "busy" if response.status == 429 else "http_status", (await response.text(errors="replace"))[:200], status=response.status
                    )
                async with contextlib.aclosing(miner_chunk_batches(response, fold)) as batches:
                    async for batch in batches:
                        # The deadline must not run while the user's side is written: suspend it around the yield.
                        deadline.reschedule(None)
                        yield batch
                        if len(fold.token_ids) > tokens:
                            tokens, progress_at = len(fold.token_ids), loop.time()  # after the user's write: its time is not the miner's
                        wait = state.settings.stall_timeout if got_tokens() else state.settings.first_token_timeout
                        deadline.reschedule(progress_at + wait)
        fold.close(require_done=False)
    except TimeoutError as exc:
        raise MinerFailed("stalled", f"no token within {wait:g} s" if not got_tokens() else f"no chunk within {wait:g} s") from exc
    except StreamViolation as exc:
        raise MinerFailed("violation", exc.reason) from exc
    except aiohttp.ClientError as exc:
        raise MinerFailed("connection", f"{type(exc).__name__}: {exc}") from exc
    if fold.error is not None:
        raise MinerFailed("error_event", fold.error[:200])
