"""Where a neuron's chain is and which hotkey it acts as: one typed config every role's config holds."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

PUBLIC_NETWORKS = ("finney", "test")  # where validators, gateways and users reach an endpoint from other hosts


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

    def check_announced(self, ip: str) -> None:
        """ValueError when ``ip`` cannot be announced on this network: on a public one (finney, test), an
        address no other host can reach (loopback, private, link-local) would take pay for an endpoint no
        validator, gateway or user reaches."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError as exc:
            raise ValueError(f"--external-ip {ip!r} is not an IP address") from exc
        if self.network in PUBLIC_NETWORKS and not address.is_global:
            raise ValueError(
                f"--external-ip {ip} is a {'loopback' if address.is_loopback else 'private or reserved'} address: nothing on {self.network} "
                "can reach it. Give this host's public address (and --external-port where a port mapping forwards to --port)"
            )
