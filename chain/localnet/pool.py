"""The localnet's transaction pool and block inclusion: what a node checks before dispatch
(signature, nonce, duplicates), the dispatch itself with its events, and the MEV-shield
carrier opened with the block author's ML-KEM-768 key. Pool rejections change nothing;
failed dispatches are recorded, consume the nonce and change nothing else."""

from __future__ import annotations

import logging
import sqlite3
from hashlib import blake2b
from typing import Any, Optional

import bittensor_core
from bittensor.balance import Balance
from bittensor.result import ChainError, ExtrinsicResult
from Crypto.Cipher import ChaCha20_Poly1305
from cryptography.hazmat.primitives.asymmetric import mlkem

from . import codec, runtime, store
from .dispatch import dispatch
from .runtime import Context, DispatchError

log = logging.getLogger(__name__)


def admit(extrinsic: codec.Extrinsic, genesis: store.Genesis) -> Optional[str]:
    """The pool's checks that need no state: a rejection message, or None."""
    if not signature_ok(extrinsic, genesis):
        log.warning("rejected extrinsic from %s: bad signature", extrinsic.signer)
        return "Invalid Transaction: Transaction has a bad signature"
    try:
        codec.decode_call(extrinsic.call_data)
    except ValueError as exc:
        return f"Invalid Transaction: {exc}"
    return None


def signature_ok(extrinsic: codec.Extrinsic, genesis: store.Genesis) -> bool:
    payload = codec.signing_payload(extrinsic.call_data, signer=extrinsic.signer, nonce=extrinsic.nonce, era=extrinsic.era, genesis_hash=genesis.genesis_hash)
    try:
        return bool(bittensor_core.verify(payload, extrinsic.signature, extrinsic.signer))
    except Exception:  # malformed address or signature bytes: not a valid signature
        return False


def apply(conn: sqlite3.Connection, genesis: store.Genesis, mev_key: mlkem.MLKEM768PrivateKey, block: int, extrinsic: codec.Extrinsic) -> Optional[str]:
    """Apply one extrinsic in ``block``; a pool rejection message, or None once recorded."""
    free, nonce = runtime.account(conn, extrinsic.signer)
    if extrinsic.nonce < nonce:
        return "Invalid Transaction: Transaction is outdated (stale nonce)"
    if extrinsic.nonce > nonce:
        return "Invalid Transaction: Transaction will be valid in the future (nonce too high)"
    if conn.execute("SELECT 1 FROM extrinsics WHERE hash = ?", (extrinsic.hash,)).fetchone():
        return "Invalid Transaction: Transaction Already Imported"
    runtime.set_account(conn, extrinsic.signer, free, nonce + 1)
    module, function, params = codec.decode_call(extrinsic.call_data)
    ctx = Context(conn=conn, block=block, events=[])
    inner: Optional[codec.Extrinsic] = None
    conn.execute("SAVEPOINT dispatch")
    try:
        if (module, function) == ("MevShield", "submit_encrypted"):
            inner = decrypt(mev_key, params["ciphertext"])
            ctx.emit("MevShield", "EncryptedSubmitted", who=extrinsic.signer)
        else:
            dispatch(ctx, extrinsic.signer, module, function, params)
        error = None
        conn.execute("RELEASE dispatch")
    except DispatchError as exc:
        conn.execute("ROLLBACK TO dispatch")
        conn.execute("RELEASE dispatch")
        log.info("extrinsic %s.%s from %s failed: %s", module, function, extrinsic.signer, exc)
        error = {"type": "Module", "name": exc.name, "docs": [exc.docs]}
        ctx.events = []
    _record(conn, block, extrinsic, module, function, error, ctx.events)
    if inner is not None:
        rejected = "bad signature" if not signature_ok(inner, genesis) else apply(conn, genesis, mev_key, block, inner)
        if rejected:
            log.warning("shielded inner extrinsic from %s dropped: %s", inner.signer, rejected)
    return None


def _record(conn: sqlite3.Connection, block: int, extrinsic: codec.Extrinsic, module: str, function: str, error: Optional[dict], events: list) -> None:
    idx = conn.execute("SELECT COUNT(*) FROM extrinsics WHERE block = ?", (block,)).fetchone()[0]
    outcome_event: dict[str, Any] = {"module_id": "System", "event_id": "ExtrinsicSuccess" if error is None else "ExtrinsicFailed", "attributes": {}}
    conn.execute(
        "INSERT INTO extrinsics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (extrinsic.hash, block, idx, extrinsic.signer, module, function, int(error is None), codec.to_json(error), codec.to_json(events + [outcome_event])),
    )


def decrypt(mev_key: mlkem.MLKEM768PrivateKey, blob: bytes) -> codec.Extrinsic:
    """Open a MEV-shield carrier: [key_hash 16][u16 kem_len][kem_ct][nonce 24][aead_ct]."""
    try:
        blob = bytes(blob)
        kem_len = int.from_bytes(blob[16:18], "little")
        kem_ct = blob[18 : 18 + kem_len]
        nonce = blob[18 + kem_len : 18 + kem_len + 24]
        sealed = blob[18 + kem_len + 24 :]
        key = mev_key.decapsulate(kem_ct)
        plain = ChaCha20_Poly1305.new(key=key, nonce=nonce).decrypt_and_verify(sealed[:-16], sealed[-16:])
        return codec.Extrinsic.decode(plain)
    except (ValueError, KeyError) as exc:
        raise DispatchError("DecryptionFailed", f"The shielded payload could not be decrypted: {exc}") from exc


def hash_of_block(genesis: store.Genesis, number: int) -> str:
    """32 bytes: the block number (8, big-endian) then 24 bytes bound to this chain's genesis,
    so a hash maps back to its number without a search."""
    digest = blake2b(f"{genesis.genesis_hash}:{number}".encode(), digest_size=24).hexdigest()
    return f"0x{number:016x}{digest}"


def rejection(message: str) -> ExtrinsicResult:
    return ExtrinsicResult(success=False, message=message, error=ChainError(message))


def result_of(row: sqlite3.Row, genesis: store.Genesis) -> ExtrinsicResult:
    block_hash = hash_of_block(genesis, int(row["block"]))
    extrinsic_id = f"{row['block']}-{row['idx']:04d}"
    events = codec.from_json(row["events"])
    if row["success"]:
        return ExtrinsicResult(success=True, message="Success", block_hash=block_hash, extrinsic_id=extrinsic_id, fee=Balance.from_rao(0), events=events)
    error = codec.from_json(row["error"])
    text = " ".join(error.get("docs") or [error["name"]])
    return ExtrinsicResult(
        success=False,
        message=text,
        block_hash=block_hash,
        extrinsic_id=extrinsic_id,
        fee=Balance.from_rao(0),
        events=events,
        error=ChainError(text, error["name"]),
    )
