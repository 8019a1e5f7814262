"""SubtensorModule extrinsics for neurons: burned registration (uid allocation and replacement) and serving an axon endpoint."""

from __future__ import annotations

import ipaddress

from . import codec
from .runtime import Context, DispatchError, account, neurons, registered_uid, save_subnet, set_account, subnet, uid_of
from .store import RAO_PER_TAO


def burned_register(ctx: Context, coldkey: str, p: dict) -> None:
    netuid, hotkey = int(p["netuid"]), str(p["hotkey"])
    hp, state = subnet(ctx.conn, netuid)
    if not hp["registration_allowed"]:
        raise DispatchError("SubNetRegistrationDisabled", f"Registration is disabled on subnet {netuid}.")
    if uid_of(ctx.conn, netuid, hotkey) is not None:
        raise DispatchError("HotKeyAlreadyRegisteredInSubNet", f"The hotkey {hotkey} is already registered on subnet {netuid}.")
    owner = ctx.conn.execute("SELECT coldkey FROM owners WHERE hotkey = ?", (hotkey,)).fetchone()
    if owner is not None and owner["coldkey"] != coldkey:
        raise DispatchError("NonAssociatedColdKey", f"The hotkey {hotkey} belongs to another coldkey.")
    counter = state["registrations"]
    if counter["block"] != ctx.block:
        counter = {"block": ctx.block, "count": 0}
    if counter["count"] >= hp["max_registrations_per_block"]:
        raise DispatchError("TooManyRegistrationsThisBlock", "Too many registrations in this block; retry in the next one.")
    free, nonce = account(ctx.conn, coldkey)
    if free < hp["burn"]:
        raise DispatchError("NotEnoughBalanceToStake", f"Registration costs {hp['burn'] / RAO_PER_TAO} TAO; the coldkey has {free / RAO_PER_TAO} TAO.")
    set_account(ctx.conn, coldkey, free - hp["burn"], nonce)
    uid = _free_uid(ctx, netuid, hp)
    ctx.conn.execute("DELETE FROM neurons WHERE netuid = ? AND uid = ?", (netuid, uid))
    ctx.conn.execute(
        "INSERT INTO neurons (netuid, uid, hotkey, coldkey, registered_at) VALUES (?, ?, ?, ?, ?)",
        (netuid, uid, hotkey, coldkey, ctx.block),
    )
    ctx.conn.execute("INSERT OR IGNORE INTO owners VALUES (?, ?)", (hotkey, coldkey))
    counter["count"] += 1
    state["registrations"] = counter
    save_subnet(ctx.conn, netuid, hp, state)
    ctx.emit("SubtensorModule", "NeuronRegistered", netuid=netuid, uid=uid, hotkey=hotkey)


def _free_uid(ctx: Context, netuid: int, hp: dict) -> int:
    """The next uid, or on a full subnet the non-immune uid with the lowest pruning score."""
    rows = neurons(ctx.conn, netuid)
    if len(rows) < hp["max_uids"]:
        return len(rows)
    candidates = [r for r in rows if ctx.block - r["registered_at"] >= hp["immunity_period"]]
    if not candidates:
        raise DispatchError("NoNeuronIdAvailable", f"Subnet {netuid} is full and every neuron is still immune.")
    victim = min(candidates, key=lambda r: (codec.from_json(r["scores"]).get("pruning_score", 0.0), r["registered_at"], r["uid"]))
    uid = int(victim["uid"])
    ctx.conn.execute("DELETE FROM commitments WHERE netuid = ? AND hotkey = ?", (netuid, victim["hotkey"]))
    ctx.emit("SubtensorModule", "NeuronPruned", netuid=netuid, uid=uid, hotkey=victim["hotkey"])
    return uid


def serve_axon(ctx: Context, hotkey: str, p: dict) -> None:
    netuid = int(p["netuid"])
    uid = registered_uid(ctx.conn, netuid, hotkey)
    hp, _ = subnet(ctx.conn, netuid)
    ip_type, ip, port = int(p["ip_type"]), int(p["ip"]), int(p["port"])
    if ip_type not in (4, 6):
        raise DispatchError("InvalidIpType", f"ip_type must be 4 or 6, got {ip_type}.")
    try:
        address = ipaddress.IPv4Address(ip) if ip_type == 4 else ipaddress.IPv6Address(ip)
    except ValueError as exc:
        raise DispatchError("InvalidIpAddress", f"{ip} is not an IPv{ip_type} address.") from exc
    if address.is_unspecified or not 0 < port < 65536:
        raise DispatchError("InvalidIpAddress", f"{address}:{port} is not a servable endpoint.")
    row = ctx.conn.execute("SELECT axon FROM neurons WHERE netuid = ? AND uid = ?", (netuid, uid)).fetchone()
    previous = codec.from_json(row["axon"]) if row["axon"] else None
    if previous and hp["serving_rate_limit"] and ctx.block - previous["block"] < hp["serving_rate_limit"]:
        raise DispatchError("ServingRateLimitExceeded", f"Endpoints may change once every {hp['serving_rate_limit']} blocks.")
    axon = {
        "block": ctx.block,
        "version": int(p["version"]),
        "ip": ip,
        "port": port,
        "ip_type": ip_type,
        "protocol": int(p["protocol"]),
        "placeholder1": int(p.get("placeholder1", 0)),
        "placeholder2": int(p.get("placeholder2", 0)),
    }
    ctx.conn.execute("UPDATE neurons SET axon = ? WHERE netuid = ? AND uid = ?", (codec.to_json(axon), netuid, uid))
    ctx.emit("SubtensorModule", "AxonServed", netuid=netuid, hotkey=hotkey)
