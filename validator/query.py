"""Asking one miner one challenge: a signed streamed request, every chunk's arrival timed.

Timeouts are explicit: connecting, the first token (``ttft``: bytes that carry no token,
such as comments dripped to keep a socket alive, do not count), and the whole answer
(``total``). The outcome kinds match ``scoring.aggregate.Outcome``: a 429 counts against
the miner only when it was under its declared capacity, which the validator guarantees
by never sending more than that at once. A stream that breaks the protocol (see
``protocol.responses``) is ``violation``: the answer cannot be verified because of what the
miner sent, which the round scores as a fidelity failure.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal, Optional

import aiohttp

from btauth.client import MinerClient, miner_chunks
from protocol.responses import StreamFold
from protocol.sse import StreamViolation
from scoring.latency import StreamTiming
from validator.verify import MinerResponse


@dataclass(frozen=True)
class Timeouts:
    connect: float = 3.0
    ttft: float = 20.0
    total: float = 120.0


@dataclass
class QueryResult:
    kind: Literal["ok", "error", "timeout", "refused", "violation"]  # violation: the stream broke the protocol (the miner's fault, never ours)
    response: Optional[MinerResponse] = None
    timing: Optional[StreamTiming] = None
    detail: str = ""


async def ask(client: MinerClient, body: dict[str, Any], timeouts: Timeouts) -> QueryResult:
    """Send ``body`` (streaming) and collect the answer with the arrival time of each token chunk."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect)
    fold = StreamFold(chat=True, max_tokens=int(body["max_tokens"]), logprobs=bool(body.get("logprobs")))
    sent = time.monotonic()
    arrivals, counts = [], []
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeouts.ttft) as deadline:
            async with client.post("/v1/chat/completions", body, timeout=timeout) as response:
                if response.status == 429:
                    return QueryResult("refused", detail=f"HTTP 429: {(await response.text(errors='replace'))[:300]}")
                if response.status != 200:
                    return QueryResult("error", detail=f"HTTP {response.status}: {(await response.text(errors='replace'))[:300]}")
                async for chunk in miner_chunks(response, fold):
                    tokens = sum(len(c.token_ids or []) for c in chunk.choices)
                    if tokens:
                        if not arrivals:
                            deadline.reschedule(loop.time() + timeouts.total - (time.monotonic() - sent))
                        arrivals.append(time.monotonic())
                        counts.append(tokens)
        fold.close()
    except StreamViolation as exc:
        return QueryResult("violation", detail=exc.reason)
    except TimeoutError:
        return QueryResult("timeout", detail=f"no answer within the limits ({timeouts.ttft:g} s to the first token, {timeouts.total:g} s in all)")
    except aiohttp.ClientError as exc:
        return QueryResult("error", detail=f"{type(exc).__name__}: {exc}")
    answer = MinerResponse.from_fold(fold)
    if answer.error is not None:
        return QueryResult("error", response=answer, detail=f"the miner's stream reported an error: {answer.error[:300]}")
    return QueryResult("ok", response=answer, timing=StreamTiming(sent, tuple(arrivals), tuple(counts)))
