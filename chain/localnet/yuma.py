"""Yuma consensus for one subnet epoch, as pure array arithmetic (no I/O).

Follows the public description of subtensor's epoch: validators' weights are
stake-weighted into a per-miner consensus (the κ-quantile, a median for κ = 0.5),
weights above consensus are clipped, ranks become incentive, and bonds (an EMA of
stake × clipped weight) turn incentive into validator dividends. All vectors are
indexed by uid; every returned score is in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpochInput:
    stake: np.ndarray  # (n,) stake per uid, any non-negative unit
    validator_permit: np.ndarray  # (n,) bool
    weights: np.ndarray  # (n, n) raw weights, row = validator, column = miner
    bonds: np.ndarray  # (n, n) previous bonds, column-normalized
    active: np.ndarray  # (n,) bool: updated within the activity cutoff
    kappa: float = 0.5
    bonds_alpha: float = 0.1  # weight of this epoch's bonds in the EMA


@dataclass(frozen=True)
class EpochOutput:
    rank: np.ndarray
    trust: np.ndarray
    consensus: np.ndarray
    incentive: np.ndarray
    dividends: np.ndarray
    validator_trust: np.ndarray
    bonds: np.ndarray


def _normalize(v: np.ndarray) -> np.ndarray:
    total = v.sum()
    return v / total if total > 0 else np.zeros_like(v)


def _normalize_rows(m: np.ndarray) -> np.ndarray:
    sums = m.sum(axis=1, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


def _normalize_columns(m: np.ndarray) -> np.ndarray:
    sums = m.sum(axis=0, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


def weighted_quantile_columns(weights: np.ndarray, stake: np.ndarray, kappa: float) -> np.ndarray:
    """Per column j, the largest value c such that the stake behind weights >= c is
    at least ``kappa`` of the total (the stake-weighted κ-quantile from above)."""
    n_cols = weights.shape[1]
    out = np.zeros(n_cols)
    total = stake.sum()
    if total <= 0:
        return out
    for j in range(n_cols):
        column = weights[:, j]
        order = np.argsort(-column, kind="stable")
        support = np.cumsum(stake[order])
        reached = np.nonzero(support >= kappa * total - 1e-12)[0]
        if reached.size:
            out[j] = column[order[reached[0]]]
    return out


def epoch(inp: EpochInput) -> EpochOutput:
    """Run one Yuma epoch."""
    n = inp.stake.shape[0]
    permit = inp.validator_permit & inp.active
    stake = _normalize(np.where(permit, inp.stake.astype(float), 0.0))

    weights = inp.weights.astype(float).copy()
    weights[~permit, :] = 0.0
    np.fill_diagonal(weights, 0.0)  # self-weights earn nothing
    weights = _normalize_rows(weights)

    preranks = stake @ weights
    consensus = weighted_quantile_columns(weights, stake, inp.kappa)
    clipped = np.minimum(weights, consensus[np.newaxis, :])
    validator_trust = clipped.sum(axis=1)
    rank = stake @ clipped
    incentive = _normalize(rank)
    trust = np.divide(rank, preranks, out=np.zeros(n), where=preranks > 0)

    bonds_delta = _normalize_columns(stake[:, np.newaxis] * clipped)
    bonds = _normalize_columns(inp.bonds_alpha * bonds_delta + (1 - inp.bonds_alpha) * inp.bonds)
    dividends = _normalize(bonds @ incentive)

    return EpochOutput(
        rank=rank,
        trust=trust,
        consensus=consensus,
        incentive=incentive,
        dividends=dividends,
        validator_trust=validator_trust,
        bonds=bonds,
    )


def emission_split(total: int, incentive: np.ndarray, dividends: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Split one epoch's emission (integer units): 41% to miners by incentive, 41% to
    validators by dividends, 18% to the subnet owner. Returns (miner, validator, owner).
    A share with nobody to receive it goes to the owner, so nothing is minted twice."""
    miner_pool = total * 41 // 100
    validator_pool = total * 41 // 100
    miner = np.floor(incentive * miner_pool).astype(np.int64) if incentive.sum() > 0 else np.zeros_like(incentive, dtype=np.int64)
    validator = np.floor(dividends * validator_pool).astype(np.int64) if dividends.sum() > 0 else np.zeros_like(dividends, dtype=np.int64)
    owner = total - int(miner.sum()) - int(validator.sum())
    return miner, validator, owner
