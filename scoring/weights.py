"""From standings to the weight vector a validator sets: pay for delivered, verified capacity.

    weight ∝ effective ** SHARPEN_EXPONENT × capacity ** CAPACITY_EXPONENT

then the SDK's clipping (every weight at or under the subnet's max-weight limit, summing to 1).

- ``effective`` ∈ [0, 1] is the miner's standing (``scoring.aggregate``): fidelity gates it
  (a failed or flagged miner is 0), then reliability² × (quality and speed under load), times
  the evidence's credit and the share of users it served. It is per unit of capacity: how
  well each stream is served. The exponent widens the gap between good and best (as SN19's
  score⁴), and rewards the better model through the quality term.
- ``capacity`` is what the miner delivered with its declared concurrency in flight
  (``scoring.aggregate.delivered``: verified tokens/s, every miner of a model probed at the
  same moment, refused or failed streams delivering 0), in streams at its model's reference
  speed (the model list's ``stream_tokens_per_s``: a token of a larger model is worth more),
  an EMA over its probes. Pay grows with it, concavely:
  a miner with 10× the capacity earns 10^0.8 = 6.3× as much, so one huge miner does not take
  all. Splitting an engine between hotkeys gains at most 2^(1 − 0.8) = 1.15× (each hotkey is
  probed with its share of the engine's streams at the same moment, so each delivers its share):
  the bound is 1.2×, which needs an exponent ≥ 1 − log2(1.2) = 0.737; 0.8 leaves room for
  measurement noise. A miner that declares more concurrency than it serves is probed at its
  declaration: it delivers what its engine can (no more capacity than an honest declaration),
  while each of its streams is slower (a lower speed term): it earns less than the truth would.

All-zero standings give no weights (nothing to set this round).
"""

from __future__ import annotations

from typing import Mapping, Optional

from bittensor.intents.weights import clip_to_max_weight

SHARPEN_EXPONENT = 4.0
CAPACITY_EXPONENT = 0.8


def to_weights(
    effective: Mapping[int, float],
    capacity: Optional[Mapping[int, float]] = None,
    max_weight: float = 1.0,
    exponent: float = SHARPEN_EXPONENT,
) -> dict[int, float]:
    """uid → weight in [0, max_weight], summing to 1; {} when every score is zero. ``capacity``: uid →
    the streams it delivers at load (None: every miner alike, standing alone decides)."""
    if any(not 0.0 <= s <= 1.0 for s in effective.values()):
        raise ValueError("effective scores must be in [0, 1]")
    if capacity is not None and any(c < 0 for c in capacity.values()):
        raise ValueError("capacities must be ≥ 0")
    raw = {uid: s**exponent * (1.0 if capacity is None else capacity.get(uid, 0.0) ** CAPACITY_EXPONENT) for uid, s in effective.items()}
    uids = sorted(uid for uid, w in raw.items() if w > 0)
    if not uids:  # nothing earned, or underflow of tiny scores
        return {}
    return dict(zip(uids, clip_to_max_weight([raw[uid] for uid in uids], max_weight)))
