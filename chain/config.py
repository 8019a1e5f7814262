"""Where a neuron's chain is and which hotkey it acts as: one typed config every role's config holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChainConfig:
    network: str  # finney, test, local, ws(s)://host:port, or localnet:DIR
    netuid: int
    wallet_path: str
    wallet_name: str
    wallet_hotkey: str = "default"

    def __post_init__(self) -> None:
        if not self.network:
            raise ValueError("the network is empty")
        if self.netuid < 0:
            raise ValueError(f"netuid {self.netuid} is negative")
        if not self.wallet_name or not self.wallet_hotkey:
            raise ValueError("the wallet name and hotkey must not be empty")

    def wallet(self) -> Any:
        """The ``bittensor.Wallet`` (sign with its ``.hotkey`` keypair: the Wallet re-reads its keyfile on every call)."""
        import bittensor as bt

        return bt.Wallet(self.wallet_name, self.wallet_hotkey, path=self.wallet_path)
