"""Wire encoding of the localnet's calls and extrinsics, and what a signer signs.

The real chain encodes calls in SCALE against runtime metadata. The localnet has no
runtime metadata, so a call is canonical JSON (sorted keys, bytes as ``{"0x": hex}``)
inside the SDK's own ``CallBytes`` value; everything the SDK derives from a call
(its hash, equality) works on those bytes unchanged. An extrinsic is the call plus
signer, nonce, era and an sr25519 signature over :func:`signing_payload`, exactly the
fields a Substrate node checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

# The one import of the SDK's private transport contract: the types the Substrate protocol speaks in.
from bittensor._transport.contract import CallBytes, UnsignedExtrinsic  # noqa: F401 (UnsignedExtrinsic: re-exported for node.py)

SPEC_VERSION = 1
EXTRINSIC_VERSION = 1
# Substrate signs payloads longer than 256 bytes by their blake2b-256 hash.
_MAX_RAW_PAYLOAD = 256


def _to_wire(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"0x": bytes(value).hex()}
    if isinstance(value, dict):
        return {str(k): _to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    return value


def _from_wire(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"0x"}:
            return bytes.fromhex(value["0x"])
        return {k: _from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_wire(v) for v in value]
    return value


def _canonical(value: Any) -> bytes:
    return json.dumps(_to_wire(value), sort_keys=True, separators=(",", ":")).encode()


def encode_call(module: str, function: str, params: dict) -> CallBytes:
    """A composed call for ``(module, function, params)``."""
    data = _canonical({"module": module, "function": function, "params": params})
    return CallBytes(data=data, spec_version=SPEC_VERSION)


def decode_call(data: bytes) -> tuple[str, str, dict]:
    """``(module, function, params)`` from composed call bytes; ValueError if malformed."""
    try:
        body = _from_wire(json.loads(data))
        return str(body["module"]), str(body["function"]), dict(body["params"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"undecodable call data: {exc}") from exc


def hex_hash(data: bytes) -> str:
    """0x-hex blake2b-256, the hash Substrate uses for extrinsics and blocks."""
    return "0x" + blake2b(data, digest_size=32).hexdigest()


def signing_payload(call_data: bytes, *, signer: str, nonce: int, era: int, genesis_hash: str) -> bytes:
    """The exact bytes an account signs for one extrinsic.

    Binds the call, the signer, the nonce (replay protection), the era and the genesis
    hash (no replay onto another localnet).
    """
    payload = _canonical(
        {
            "call": call_data,
            "era": int(era),
            "genesis": genesis_hash,
            "nonce": int(nonce),
            "signer": signer,
            "version": EXTRINSIC_VERSION,
        }
    )
    if len(payload) > _MAX_RAW_PAYLOAD:
        return blake2b(payload, digest_size=32).digest()
    return payload


@dataclass(frozen=True)
class Extrinsic:
    """A signed extrinsic as the localnet node receives it."""

    call_data: bytes
    signer: str
    nonce: int
    era: int
    signature: bytes

    def encode(self) -> bytes:
        return _canonical(
            {
                "call": self.call_data,
                "era": self.era,
                "nonce": self.nonce,
                "signature": self.signature,
                "signer": self.signer,
                "version": EXTRINSIC_VERSION,
            }
        )

    @property
    def hash(self) -> str:
        return hex_hash(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> "Extrinsic":
        """Parse extrinsic bytes; ValueError if they are not a localnet extrinsic."""
        try:
            body = _from_wire(json.loads(bytes(data)))
            return cls(
                call_data=bytes(body["call"]),
                signer=str(body["signer"]),
                nonce=int(body["nonce"]),
                era=int(body["era"]),
                signature=bytes(body["signature"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"undecodable extrinsic: {exc}") from exc


def to_json(value: Any) -> str:
    """Storage encoding for values kept in SQLite."""
    return json.dumps(_to_wire(value), sort_keys=True)


def from_json(text: str | None) -> Any:
    return None if text is None else _from_wire(json.loads(text))
