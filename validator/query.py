"""Asking one miner one challenge: a signed streamed request, every chunk's arrival timed.

Timeouts are explicit: connecting, the first byte (``ttft_timeout``), and the whole
answer (``total_timeout``). The outcome kinds match ``scoring.aggregate.Outcome``: a 429
counts against the miner only when it was under its declared capacity, which the
validator guarantees by never sending more than that at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Optional

import aiohttp

from miner.client import MinerClient, sse_events
from scoring.latency import StreamTiming
from validator.verify import MinerResponse, collect


@dataclass(frozen=True)
class Timeouts:
    connect: float = 3.0
    ttft: float = 20.0
    total: float = 120.0


@dataclass
class QueryResult:
    kind: str  # "ok" | "error" | "timeout" | "refused"
    response: Optional[MinerResponse] = None
    timing: Optional[StreamTiming] = None
    detail: str = ""


async def ask(client: MinerClient, body: dict[str, Any], timeouts: Timeouts) -> QueryResult:
    """Send ``body`` (streaming) and collect the answer with the arrival time of each token chunk."""
    timeout = aiohttp.ClientTimeout(total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.ttft)
    sent = time.monotonic()
    events, arrivals, counts = [], [], []
    try:
        async with client.post("/v1/chat/completions", body, timeout=timeout) as response:
            if response.status == 429:
                return QueryResult("refused", detail=(await response.text())[:300])
            if response.status != 200:
                return QueryResult("error", detail=f"HTTP {response.status}: {(await response.text())[:300]}")
            async for event in sse_events(response):
                arrived = time.monotonic()
                events.append(event)
                tokens = sum(len(c.get("token_ids") or []) for c in event.get("choices") or [])
                if tokens:
                    arrivals.append(arrived)
                    counts.append(tokens)
    except asyncio.TimeoutError:
        return QueryResult("timeout", detail=f"no answer within the limits ({timeouts.ttft:g} s to a byte, {timeouts.total:g} s in all)")
    except (aiohttp.ClientError, ValueError) as exc:
        return QueryResult("error", detail=f"{type(exc).__name__}: {exc}")
    answer = collect(events)
    if answer.error is not None:
        return QueryResult("error", response=answer, detail=answer.error)
    return QueryResult("ok", response=answer, timing=StreamTiming(sent, tuple(arrivals), tuple(counts)))
