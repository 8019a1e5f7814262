"""The embedded localnet: a one-machine Bittensor chain behind the SDK's Substrate seam."""

from .node import LocalnetSubstrate
from .store import LocalnetMissing

__all__ = ["LocalnetSubstrate", "LocalnetMissing"]
