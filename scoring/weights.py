"""From standings to the weight vector a validator sets: sharpen, then the SDK's clipping.

``weights = clip_to_max_weight(effective ** exponent, max_weight)``: the exponent widens
the gap between good and best (the best miners earn most, as in SN19's score⁴); the
SDK's clipping keeps every weight at or under the subnet's max-weight limit and sums to 1.
All-zero standings give no weights (nothing to set this round).
"""

from __future__ import annotations

from typing import Mapping

from bittensor.intents.weights import clip_to_max_weight

SHARPEN_EXPONENT = 4.0


def to_weights(effective: Mapping[int, float], max_weight: float = 1.0, exponent: float = SHARPEN_EXPONENT) -> dict[int, float]:
    """uid → weight in [0, max_weight], summing to 1; {} when every score is zero."""
    if any(not 0.0 <= s <= 1.0 for s in effective.values()):
        raise ValueError("effective scores must be in [0, 1]")
    uids = sorted(uid for uid, s in effective.items() if s > 0)
    if not uids:
        return {}
    sharpened = [effective[uid] ** exponent for uid in uids]
    if sum(sharpened) == 0:  # underflow of tiny scores
        return {}
    return dict(zip(uids, clip_to_max_weight(sharpened, max_weight)))
