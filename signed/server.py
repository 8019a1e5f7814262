"""The receiving side of btauth/1: a request's signature, address, freshness and nonce, checked.

``bittensor.http_auth`` does the cryptography; this names each way a request can fail, so a
server can answer it with a specific code. Nonces must outlive the SDK's freshness window
(10 s back, 2 s ahead); the store is this process's own (several workers need a shared one).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import bittensor as bt

from protocol.errors import Unauthorized

_AUTH_CODES = {
    bt.http_auth.MalformedAuth: "auth_missing",
    bt.http_auth.WrongReceiver: "auth_wrong_receiver",
    bt.http_auth.StaleRequest: "auth_stale",
    bt.http_auth.ReplayedRequest: "auth_replayed",
    bt.http_auth.BadSignature: "auth_bad_signature",
}
NONCE_RETENTION_S = 60.0


class SignatureCheck:
    """Verifies requests addressed to ``self_hotkey``; every nonce is accepted once."""

    def __init__(self, self_hotkey: str, nonces: Optional[Any] = None):
        self.self_hotkey = self_hotkey
        self.nonces = nonces if nonces is not None else bt.http_auth.InMemoryNonceStore(retention=NONCE_RETENTION_S)

    def sender(self, headers: Mapping[str, str], body: bytes, method: str, path: str) -> str:
        """The signing hotkey (ss58); ``protocol.errors.Unauthorized`` (every role's 401, its code saying how) when the
        request is missing, forged, stale, replayed or misaddressed."""
        try:
            caller = bt.http_auth.verify(headers, body, method=method, path=path, self_hotkey_ss58=self.self_hotkey, nonce_store=self.nonces)
        except bt.http_auth.AuthError as exc:
            code = next((c for kind, c in _AUTH_CODES.items() if isinstance(exc, kind)), "auth_failed")
            raise Unauthorized(f"btauth/1: {exc}", code) from exc
        return caller.hotkey_ss58
