"""Verifiable sampling: the randomness of a seeded answer is a public function of (seed, position, token).

A miner samples a seeded request at temperature T > 0 by Gumbel-max: it picks the token
that maximizes ``logit / T + g(seed, position, token)`` among the tokens its ``top_p``,
``top_k`` and ``min_p`` filters keep, where ``g`` is a Gumbel variate made from a 32-bit
integer hash. That is an exact sample from the tempered, filtered distribution, and anyone
holding the model can recompute the choice: a validator re-scores the answer, adds the
same ``g`` to its own logprobs and checks the miner took the winner wherever the winner's
margin exceeds honest precision drift (``scoring.evidence.choice_mismatch``).

The hash uses only 32-bit integer arithmetic carried in int64 (products stay below 2^49),
so numpy on a validator's CPU and torch on a miner's GPU compute identical bits; the
``log`` that turns them into a Gumbel variate is the only floating-point step, and its
ulp-level differences are far below the margins checked. Every function takes a Python
int, a numpy int64 array or a torch int64 tensor.
"""

from __future__ import annotations

import math
from typing import Any

MASK32 = 0xFFFFFFFF
UNIFORM_BITS = 24  # exactly representable in float32 as well as float64


def _mul32(x: Any, constant: int) -> Any:
    """``x * constant mod 2^32`` for 0 ≤ x < 2^32, without any product reaching 2^63."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & MASK32


def mix32(x: Any) -> Any:
    """A 32-bit integer finalizer (xorshift-multiply, the lowbias32 constants)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def position_keys(seed: int, position: int) -> tuple[int, int]:
    """The two 32-bit keys of one position of one seeded request (seed taken mod 2^64)."""
    seed &= (1 << 64) - 1
    first = mix32((seed & MASK32) ^ mix32(((seed >> 32) & MASK32) ^ mix32(position & MASK32)))
    return first, mix32(first ^ 0x9E3779B9)


def token_hashes(seed: int, position: int, token_ids: Any) -> Any:
    """32-bit hashes of ``token_ids`` (non-negative int64) at ``position`` of the request seeded ``seed``."""
    first, second = position_keys(seed, position)
    return mix32(mix32(token_ids ^ first) ^ second)


def gumbel_of_hash(hashes: Any, log: Any) -> Any:
    """Gumbel variates from hashes: u = (top 24 bits + ½) / 2^24, g = −log(−log u). ``log``: the
    array library's own (numpy.log, torch.log) or math.log for a Python int."""
    uniform = (_float64(hashes >> (32 - UNIFORM_BITS)) + 0.5) / float(1 << UNIFORM_BITS)
    return -log(-log(uniform))


def _float64(x: Any) -> Any:
    """x as float64 (torch would otherwise make float32 of an int tensor plus a float)."""
    if hasattr(x, "double"):
        return x.double()
    if hasattr(x, "astype"):
        return x.astype("float64")
    return float(x)


def gumbel(seed: int, position: int, token_id: int) -> float:
    """One token's Gumbel variate, in plain Python (float64)."""
    return gumbel_of_hash(token_hashes(seed, position, token_id), math.log)


# The extreme Gumbel variates a 24-bit uniform can make: −log(−log(1 − 2^-25)) ≈ 17.33 and
# −log(−log(2^-25)) ≈ −2.85.
GUMBEL_MAX = -math.log(-math.log(1.0 - 0.5 / (1 << UNIFORM_BITS)))
GUMBEL_MIN = -math.log(-math.log(0.5 / (1 << UNIFORM_BITS)))
