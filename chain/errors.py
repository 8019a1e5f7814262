"""Errors of the chain layer.

ChainLayerError
├── NetworkError       the network name is unknown, or the chain cannot be reached
├── NotRegistered      the hotkey has no uid on the subnet
└── WriteFailed        a write was refused (pre-checked by the SDK or failed on chain);
    │                  ``.name`` is the chain's error name, ``.result`` the WriteResult
    ├── RateLimited    too soon since the last write of this kind
    └── InvalidWeights weights that the subnet's rules refuse

Foreign exceptions (the SDK's ChainError, connection errors) are translated where
they enter this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .writes import WriteResult


class ChainLayerError(Exception):
    """Base of every error raised by ``chain``."""


class NetworkError(ChainLayerError):
    """The network cannot be used: unknown name, unreachable endpoint, no localnet."""


class NotRegistered(ChainLayerError):
    """The hotkey is not registered on the subnet."""


class WriteFailed(ChainLayerError):
    """A chain write was refused."""

    def __init__(self, message: str, name: Optional[str] = None, result: Optional["WriteResult"] = None):
        super().__init__(message)
        self.name = name
        self.result = result


class RateLimited(WriteFailed):
    """The write came too soon after the previous one (weights, serving)."""


class InvalidWeights(WriteFailed):
    """The weights break the subnet's rules (unknown uids, too few, over the max)."""


_RATE_LIMITED = {"SettingWeightsTooFast", "ServingRateLimitExceeded", "TooManyRegistrationsThisBlock", "rate_limited"}
_INVALID_WEIGHTS = {"UidVecContainInvalidOne", "WeightVecLengthIsLow", "MaxWeightExceeded", "DuplicateUids", "WeightVecNotEqualSize", "invalid_argument"}


def write_error_class(name: Optional[str]) -> type[WriteFailed]:
    """The most specific WriteFailed subclass for a chain error name or SDK error code."""
    if name in _RATE_LIMITED:
        return RateLimited
    if name in _INVALID_WEIGHTS:
        return InvalidWeights
    return WriteFailed
