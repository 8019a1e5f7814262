"""Speed of one streamed response, from the arrival times of its chunks.

Times are seconds on one monotonic clock, measured by the validator: ``sent`` when the
request left, each chunk's arrival, and the tokens each chunk carried. Nothing here
trusts the miner's own timing.

Throughput is end to end, ``tokens / (last arrival - sent)``: a miner that buffers the
whole answer and bursts it gains no throughput (its TTFT becomes its total time), and a
decode rate measured from the first token (as some subnets do) is exactly what bursting
would inflate. Bursts still matter: a buffered answer is one a streaming user did not get
as it was made, and one that could have been made elsewhere and relayed whole, so
``Speed.streamed`` feeds the per-miner buffering rule in ``scoring.aggregate`` (score 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

BURST_MIN_TOKENS = 32  # shorter answers can honestly arrive in one network read (or one stall of the reader's loop)
BURST_SPAN_S = 0.002  # all tokens inside 2 ms: one buffered write, not a stream
# ... or inside 5% of the answer's time: a buffered answer written at the end arrives in a few
# network reads (236 tokens with logprobs are ~70 KB: two reads, 5-20 ms apart on a busy
# machine), while an honest stream's tokens span its decoding, ≥ 11% of the time in every
# honest answer of the round test even behind 2.8 s of queueing.
BURST_SHARE = 0.05


@dataclass(frozen=True)
class StreamTiming:
    sent: float
    arrivals: tuple[float, ...]  # one per chunk that carried tokens, non-decreasing
    tokens: tuple[int, ...]  # tokens in each of those chunks (> 0)

    def __post_init__(self) -> None:
        if len(self.arrivals) != len(self.tokens):
            raise ValueError("arrivals and tokens must be parallel")
        if any(b < a for a, b in zip(self.arrivals, self.arrivals[1:])) or (self.arrivals and self.arrivals[0] < self.sent):
            raise ValueError("arrival times must be non-decreasing and after the request was sent")
        if any(t <= 0 for t in self.tokens):
            raise ValueError("every chunk counted here carries at least one token")

    def relative(self) -> tuple[tuple[float, int], ...]:
        """(seconds after the request was sent, tokens) per chunk."""
        return tuple((t - self.sent, n) for t, n in zip(self.arrivals, self.tokens))


@dataclass(frozen=True)
class Speed:
    ttft: float  # seconds from sent to the first token
    total: float  # seconds from sent to the last token
    tokens: int
    tokens_per_s: float  # end to end: tokens / total
    streamed: bool  # False when many tokens came in one burst


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between order statistics."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 1:
        raise ValueError("q must be in [0, 1]")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure(timing: StreamTiming) -> Speed:
    """TTFT, end-to-end throughput and whether the response was streamed. ValueError for no tokens."""
    if not timing.arrivals:
        raise ValueError("a response without tokens has no speed")
    tokens = sum(timing.tokens)
    total = timing.arrivals[-1] - timing.sent
    span = timing.arrivals[-1] - timing.arrivals[0]
    streamed = tokens < BURST_MIN_TOKENS or span >= max(BURST_SPAN_S, BURST_SHARE * total)
    return Speed(ttft=timing.arrivals[0] - timing.sent, total=total, tokens=tokens, tokens_per_s=tokens / total if total > 0 else math.inf, streamed=streamed)
