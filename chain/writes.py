"""Chain writes through the SDK's intents, each returning a :class:`WriteResult`.

A refused write is a result, not an exception: the SDK's client-side pre-checks
(rate limit, registration) and on-chain failures both come back as a failed
WriteResult whose ``raise_for_failure()`` raises the typed error from
``chain.errors``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Mapping, Optional

import bittensor as bt
from bittensor.result import ChainError

from .errors import NetworkError, write_error_class

log = logging.getLogger(__name__)

# Raw commitment fields carry at most 128 bytes each, 3 fields per commitment.
_RAW_FIELD_BYTES = 128


@dataclass(frozen=True)
class WriteResult:
    """Outcome of one chain write."""

    operation: str
    success: bool
    message: str
    error_name: Optional[str] = None  # the chain's error name (or the SDK's error code)
    block_hash: Optional[str] = None
    extrinsic_id: Optional[str] = None

    def raise_for_failure(self) -> "WriteResult":
        if not self.success:
            cls = write_error_class(self.error_name)
            raise cls(f"{self.operation} failed: {self.message}", name=self.error_name, result=self)
        return self


def _from_sdk(operation: str, result: bt.ExtrinsicResult) -> WriteResult:
    error = result.error
    name = (error.name or error.code.value) if error is not None else None
    out = WriteResult(operation, result.success, result.message, name, result.block_hash, result.extrinsic_id)
    if not out.success:
        log.warning("%s failed: %s (%s)", operation, out.message, out.error_name)
    return out


async def _guarded(operation: str, submission: Awaitable[bt.ExtrinsicResult]) -> WriteResult:
    """Await a submission; SDK pre-check refusals become failed results."""
    try:
        result = await submission
    except bt.RpcConnectionError as exc:
        raise NetworkError(f"{operation}: chain unreachable: {exc}") from exc
    except ChainError as exc:
        log.warning("%s refused before submission: %s", operation, exc.message)
        return WriteResult(operation, False, exc.message, exc.name or exc.code.value)
    return _from_sdk(operation, result)


async def execute(client: bt.Client, operation: str, intent: Any, wallet: Any) -> WriteResult:
    """Run an SDK intent (plan, sign, submit)."""
    return await _guarded(operation, client.execute(intent, wallet))


async def submit_call(client: bt.Client, operation: str, call: Any, wallet: Any, signer: str = "coldkey") -> WriteResult:
    """Sign a raw generated call with the wallet's ``signer`` key and submit it."""
    return await _guarded(operation, client.submit_call(call, wallet, signer=signer))


async def register(client: bt.Client, wallet: Any, netuid: int) -> WriteResult:
    """Register the wallet's hotkey on ``netuid``, paying the burn from its coldkey."""
    return await execute(client, "register", bt.BurnedRegister(netuid=netuid), wallet)


async def serve(client: bt.Client, wallet: Any, netuid: int, ip: str, port: int) -> WriteResult:
    """Announce the hotkey's endpoint ``ip:port`` (signed by the hotkey)."""
    return await execute(client, "serve", bt.ServeAxon(netuid=netuid, ip=ip, port=port), wallet)


def commitment_info(text: str) -> dict:
    """Split ``text`` into the Raw fields of a Commitments ``CommitmentInfo``."""
    data = text.encode()
    if len(data) > 3 * _RAW_FIELD_BYTES:
        raise ValueError(f"commitment is {len(data)} bytes; at most {3 * _RAW_FIELD_BYTES} fit")
    chunks = [data[i : i + _RAW_FIELD_BYTES] for i in range(0, len(data), _RAW_FIELD_BYTES)] or [b""]
    return {"fields": [{f"Raw{len(c)}": "0x" + c.hex()} for c in chunks]}


async def commit(client: bt.Client, wallet: Any, netuid: int, text: str) -> WriteResult:
    """Publish ``text`` as the hotkey's commitment on ``netuid``."""
    call = bt.calls.Commitments.set_commitment(netuid=netuid, info=commitment_info(text))
    return await submit_call(client, "commit", call, wallet, signer="hotkey")


async def set_weights(client: bt.Client, wallet: Any, netuid: int, weights: Mapping[int, float], version_key: int = 0) -> WriteResult:
    """Set the validator's weights: ``{uid: weight}``, any non-negative scale.

    The SDK clips to the subnet's max weight, quantizes, enforces the minimum count
    and rate limit, and commits (timelocked) instead when commit-reveal is on.
    """
    intent = bt.SetWeights(netuid=netuid, weights={int(u): float(w) for u, w in weights.items()}, version_key=version_key)
    return await execute(client, "set_weights", intent, wallet)
