"""Calling a miner: requests signed with btauth/1 for the miner's hotkey.

Validators, the gateway, benchmarks and scripts use this; the miner accepts nothing
else. Sign with the hotkey keypair (``wallet.hotkey``), not the Wallet, which re-reads
its keyfile on every signature. Each call signs a fresh nonce, so retries are safe.
"""

from __future__ import annotations

from typing import Any, Optional

import aiohttp
import bittensor as bt
import msgspec


def signed_headers(keypair: Any, receiver: str, method: str, path: str, body: bytes = b"", nonce_ns: Optional[int] = None) -> dict[str, str]:
    headers = bt.http_auth.sign(keypair, method=method, path=path, body=body, receiver_ss58=receiver, nonce_ns=nonce_ns)
    if body:
        headers["Content-Type"] = "application/json"
    return headers


class MinerClient:
    """Signed calls to one miner at ``url`` whose hotkey is ``receiver``."""

    def __init__(self, session: aiohttp.ClientSession, url: str, keypair: Any, receiver: str):
        self.session = session
        self.url = url.rstrip("/")
        self.keypair = keypair
        self.receiver = receiver

    def post(self, path: str, payload: dict[str, Any], **kwargs: Any) -> Any:
        """``session.post`` with a signed JSON body; use as ``async with client.post(...) as r``."""
        body = msgspec.json.encode(payload)
        return self.session.post(self.url + path, data=body, headers=signed_headers(self.keypair, self.receiver, "POST", path, body), **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.session.get(self.url + path, headers=signed_headers(self.keypair, self.receiver, "GET", path), **kwargs)
