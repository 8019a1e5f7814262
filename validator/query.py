"""Asking one miner one challenge: a signed streamed request, every chunk's arrival timed.

Timeouts are explicit: connecting, the first token (``ttft``: bytes that carry no token,
such as comments dripped to keep a socket alive, do not count), and the whole answer
(``total``). The outcome kinds match ``scoring.aggregate.Outcome``: a 429 counts against
the miner only when it was under its declared capacity, which the validator guarantees
by never sending more than that at once. A stream that breaks the protocol (see
``protocol.responses``) is ``violation``: the answer cannot be verified because of what the
miner sent, which the round scores as a fidelity failure.

Load on the validator must not decide pay: a timeout while the validator's own event loop
was starved (``LoopLag``: it woke more than ``BUSY_LAG_S`` late at some point since the
request left) is ``unverified`` — nobody knows whose slowness it was — not the miner's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal, Optional

import aiohttp

from protocol.records import AnswerRecord
from protocol.responses import StreamFold
from protocol.sse import StreamViolation
from protocol.streams import miner_chunks
from scoring.latency import StreamTiming
from signed.client import MinerClient

BUSY_LAG_S = 1.0  # the loop woke this late: the validator's machine, not the miner, may have been slow


class LoopLag:
    """How late this event loop has woken, sampled every ``interval`` s while a round runs: a
    busy validator (its reference engine, its disk, its GC) shows up here, a slow miner does not."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.late: list[tuple[float, float]] = []  # (monotonic time, seconds late), the last minutes'
        self.task: Optional[asyncio.Task] = None

    async def _watch(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            if (late := now - before - self.interval) > 0.05:
                self.late.append((now, late))
                del self.late[:-1000]

    def start(self) -> "LoopLag":
        self.task = asyncio.get_running_loop().create_task(self._watch())
        return self

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def worst_since(self, since: float) -> float:
        return max((late for at, late in self.late if at >= since), default=0.0)


@dataclass(frozen=True)
class Timeouts:
    connect: float = 3.0
    ttft: float = 20.0
    total: float = 120.0


@dataclass
class QueryResult:
    # violation: the stream broke the protocol (the miner's fault, never ours); unverified: timed out while we were busy
    kind: Literal["ok", "error", "timeout", "refused", "violation", "unverified"]
    response: Optional[AnswerRecord] = None
    timing: Optional[StreamTiming] = None
    detail: str = ""


async def ask(client: MinerClient, body: dict[str, Any], timeouts: Timeouts, lag: Optional[LoopLag] = None) -> QueryResult:
    """Send ``body`` (streaming) and collect the answer with the arrival time of each token chunk;
    ``lag``: this loop's lateness, which makes a timeout while it was busy nobody's fault."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect)
    fold = StreamFold(chat=True, max_tokens=int(body["max_tokens"]), logprobs=bool(body.get("logprobs")))
    sent = time.monotonic()
    arrivals: list[float] = []
    counts: list[int] = []
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
        limits = f"{timeouts.ttft:g} s to the first token, {timeouts.total:g} s in all"
        if lag is not None and (late := lag.worst_since(sent)) > BUSY_LAG_S:
            return QueryResult("unverified", detail=f"timed out ({limits}) while the validator was busy: its loop woke {late:.1f} s late")
        return QueryResult("timeout", detail=f"no answer within the limits ({limits})")
    except aiohttp.ClientError as exc:
        return QueryResult("error", detail=f"{type(exc).__name__}: {exc}")
    answer = AnswerRecord.from_fold(fold)
    if answer.error is not None:
        return QueryResult("error", response=answer, detail=f"the miner's stream reported an error: {answer.error[:300]}")
    return QueryResult("ok", response=answer, timing=StreamTiming(sent, tuple(arrivals), tuple(counts)))
