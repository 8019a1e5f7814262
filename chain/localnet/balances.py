"""The Balances pallet: transfers between accounts."""

from __future__ import annotations

from .runtime import Context, DispatchError, account, set_account
from .store import RAO_PER_TAO


def transfer(ctx: Context, sender: str, p: dict) -> None:
    raw = p["dest"]
    dest = str(raw.get("Id") if isinstance(raw, dict) else raw)
    value = int(p["value"])
    free, nonce = account(ctx.conn, sender)
    if value <= 0 or free < value:
        raise DispatchError("InsufficientBalance", f"Cannot transfer {value / RAO_PER_TAO} TAO with {free / RAO_PER_TAO} TAO free.")
    set_account(ctx.conn, sender, free - value, nonce)
    dest_free, dest_nonce = account(ctx.conn, dest)
    set_account(ctx.conn, dest, dest_free + value, dest_nonce)
    ctx.emit("Balances", "Transfer", **{"from": sender, "to": dest, "amount": value})
