"""The Commitments pallet: a neuron's commitment (the model declaration miners publish)."""

from __future__ import annotations

from typing import Any

from . import codec
from .runtime import MAX_COMMITMENT_FIELDS, Context, DispatchError, subnet, uid_of


def set_commitment(ctx: Context, hotkey: str, p: dict) -> None:
    netuid = int(p["netuid"])
    subnet(ctx.conn, netuid)
    if uid_of(ctx.conn, netuid, hotkey) is None:
        raise DispatchError("AccountNotAllowedCommit", f"Only hotkeys registered on subnet {netuid} may publish commitments.")
    fields = list((p.get("info") or {}).get("fields") or [])
    if len(fields) > MAX_COMMITMENT_FIELDS:
        raise DispatchError("TooManyFieldsInCommitmentInfo", f"A commitment holds at most {MAX_COMMITMENT_FIELDS} fields.")
    normalized = [_commitment_field(f) for f in fields]
    ctx.conn.execute(
        "INSERT INTO commitments VALUES (?, ?, ?, 0, ?) ON CONFLICT (netuid, hotkey) DO UPDATE SET block = excluded.block, info = excluded.info",
        (netuid, hotkey, ctx.block, codec.to_json({"fields": normalized})),
    )
    ctx.emit("Commitments", "Commitment", netuid=netuid, who=hotkey)


def _commitment_field(entry: Any) -> Any:
    """Validate one ``Data`` variant; Raw payloads are stored as 0x-hex like the chain returns them."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise DispatchError("BadCommitmentField", f"Unsupported commitment field {entry!r}.")
    ((variant, value),) = entry.items()
    if variant.startswith("Raw"):
        data = value if isinstance(value, bytes) else bytes.fromhex(str(value).removeprefix("0x"))
        if variant != f"Raw{len(data)}" or len(data) > 128:
            raise DispatchError("BadCommitmentField", f"{variant} cannot carry {len(data)} bytes.")
        return {variant: "0x" + data.hex()}
    raise DispatchError("BadCommitmentField", f"The localnet stores Raw commitment fields only, not {variant}.")
