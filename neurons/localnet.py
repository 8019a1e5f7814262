"""``slmnet localnet`` and ``slmnet wallet``: the embedded one-machine chain and
password-less development wallets."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from neurons.common import CliError, emit

# --- localnet -------------------------------------------------------------------------


def cmd_localnet_init(args: argparse.Namespace) -> None:
    from chain.localnet import admin

    try:
        info = admin.init(Path(args.dir), netuid=args.netuid, tempo=args.tempo, block_time=args.block_time)
    except (FileExistsError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    emit(
        args,
        info,
        lambda: print(
            f"localnet created in {info['dir']}: subnet {info['netuid']}, tempo {info['tempo']} blocks, "
            f"{info['block_time']} s per block\nowner coldkey {info['owner_coldkey']} (wallet 'owner' in {info['dir']}/wallets)\n"
            f"use it with --network localnet:{info['dir']}"
        ),
    )


def _admin(power: str, *args, **kwargs):
    """One of ``chain.localnet.admin``'s powers; a missing localnet or a bad value as a CliError."""
    from chain.localnet import LocalnetMissing, admin

    try:
        return getattr(admin, power)(*args, **kwargs)
    except (LocalnetMissing, ValueError) as exc:
        raise CliError(str(exc)) from exc


def cmd_localnet_fund(args: argparse.Namespace) -> None:
    free = _admin("fund", Path(args.dir), args.coldkey, args.tao)
    payload = {"coldkey": args.coldkey, "free_tao": free / 1e9}
    emit(args, payload, lambda: print(f"{args.coldkey} now holds {free / 1e9:g} TAO"))


def cmd_localnet_stake(args: argparse.Namespace) -> None:
    total = _admin("stake", Path(args.dir), args.coldkey, args.hotkey, args.tao, netuid=args.netuid)
    payload = {"hotkey": args.hotkey, "stake_tao": total / 1e9}
    emit(args, payload, lambda: print(f"{args.hotkey} now has {total / 1e9:g} TAO of stake"))


def cmd_localnet_set(args: argparse.Namespace) -> None:
    _admin("set_hyperparameter", Path(args.dir), args.netuid, args.name, args.value)
    print(f"subnet {args.netuid}: {args.name} = {args.value}")


def cmd_localnet_status(args: argparse.Namespace) -> None:
    import chain

    async def read() -> chain.MetagraphView:
        async with chain.connect(f"localnet:{args.dir}") as c:
            return await c.metagraph(args.netuid)

    try:
        graph = asyncio.run(read())
    except chain.ChainLayerError as exc:
        raise CliError(str(exc)) from exc
    payload = {
        "netuid": graph.netuid,
        "block": graph.block,
        "tempo": graph.tempo,
        "blocks_since_epoch": graph.blocks_since_epoch,
        "neurons": [
            {
                "uid": n.uid,
                "hotkey": n.hotkey,
                "coldkey": n.coldkey,
                "stake": n.stake,
                "validator_permit": n.validator_permit,
                "ip": n.ip,
                "port": n.port,
                "model": n.model.model if n.model else None,
                "incentive": n.incentive,
                "consensus": n.consensus,
                "trust": n.trust,
                "dividends": n.dividends,
                "emission": n.emission,
                "last_update": n.last_update,
            }
            for n in graph.neurons
        ],
    }
    emit(args, payload, lambda: _print_status(graph))


def _print_status(graph: Any) -> None:
    table = Table(title=f"subnet {graph.netuid} · block {graph.block} · tempo {graph.tempo} · {graph.blocks_since_epoch} blocks since epoch")
    for column in ("uid", "hotkey", "stake τ", "vpermit", "endpoint", "model", "incentive", "consensus", "trust", "dividends", "emission"):
        table.add_column(column, justify="right" if column not in ("hotkey", "endpoint", "model") else "left")
    for n in graph.neurons:
        table.add_row(
            str(n.uid),
            n.hotkey[:10] + "…",
            f"{n.stake:,.2f}",
            "✓" if n.validator_permit else "",
            f"{n.ip}:{n.port}" if n.ip else "-",
            n.model.model if n.model else "-",
            f"{n.incentive:.4f}",
            f"{n.consensus:.4f}",
            f"{n.trust:.4f}",
            f"{n.dividends:.4f}",
            f"{n.emission:.4f}",
        )
    # A pipe gets the whole table, not one cut to 80 columns.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


# --- wallets --------------------------------------------------------------------------


def cmd_wallet_create(args: argparse.Namespace) -> None:
    import bittensor as bt

    path = Path(args.path).expanduser()
    if (path / args.name / "hotkeys" / args.hotkey).exists():
        raise CliError(f"wallet {args.name}/{args.hotkey} already exists in {path}")
    # No password: for development networks only (the README says so).
    wallet = bt.wallets.create(args.name, args.hotkey, path=str(path), use_password=False, on_mnemonic=lambda *_: None)
    payload = {
        "name": args.name,
        "hotkey": args.hotkey,
        "path": str(path),
        "coldkey_ss58": wallet.coldkeypub.ss58_address,
        "hotkey_ss58": wallet.hotkey.ss58_address,
    }
    emit(args, payload, lambda: print(f"wallet {args.name}/{args.hotkey} in {path}\ncoldkey {payload['coldkey_ss58']}\nhotkey  {payload['hotkey_ss58']}"))


def add_parsers(groups: argparse._SubParsersAction) -> None:
    localnet = groups.add_parser("localnet", help="the embedded one-machine chain").add_subparsers(dest="command", required=True)
    init = localnet.add_parser("init", help="create a localnet in a folder")
    init.add_argument("--dir", required=True, help="folder for the chain state")
    init.add_argument("--netuid", type=int, default=1, help="the subnet to create (default 1)")
    init.add_argument("--tempo", type=int, default=20, help="blocks between epochs (default 20)")
    init.add_argument("--block-time", type=float, default=0.25, help="seconds per block (default 0.25)")
    init.add_argument("--json", action="store_true", help="print JSON")
    init.set_defaults(func=cmd_localnet_init)

    fund = localnet.add_parser("fund", help="credit TAO to a coldkey")
    fund.add_argument("--dir", required=True)
    fund.add_argument("--coldkey", required=True, help="SS58 address")
    fund.add_argument("--tao", type=float, required=True)
    fund.add_argument("--json", action="store_true", help="print JSON")
    fund.set_defaults(func=cmd_localnet_fund)

    stake = localnet.add_parser("stake", help="stake a coldkey's TAO on a registered hotkey it owns")
    stake.add_argument("--dir", required=True)
    stake.add_argument("--coldkey", required=True, help="SS58 address of the owner")
    stake.add_argument("--hotkey", required=True, help="SS58 address of the registered hotkey")
    stake.add_argument("--tao", type=float, required=True)
    stake.add_argument("--netuid", type=int, default=None, help="only this subnet (default: where the hotkey is registered)")
    stake.add_argument("--json", action="store_true", help="print JSON")
    stake.set_defaults(func=cmd_localnet_stake)

    status = localnet.add_parser("status", help="the metagraph as a table")
    status.add_argument("--dir", required=True)
    status.add_argument("--netuid", type=int, default=1)
    status.add_argument("--json", action="store_true", help="print JSON with a `neurons` list")
    status.set_defaults(func=cmd_localnet_status)

    hyper = localnet.add_parser("set", help="change a subnet hyperparameter (the owner's or sudo's power), e.g. weights_version")
    hyper.add_argument("--dir", required=True)
    hyper.add_argument("--netuid", type=int, default=1)
    hyper.add_argument("name", help="a hyperparameter: tempo, weights_version, burn, …")
    hyper.add_argument("value", help="its new value")
    hyper.set_defaults(func=cmd_localnet_set)

    wallet = groups.add_parser("wallet", help="wallets").add_subparsers(dest="command", required=True)
    create = wallet.add_parser("create", help="create a coldkey + hotkey without a password (development networks)")
    create.add_argument("--path", required=True, help="wallets folder")
    create.add_argument("--name", required=True, help="wallet (coldkey) name")
    create.add_argument("--hotkey", required=True, help="hotkey name")
    create.add_argument("--json", action="store_true", help="print JSON")
    create.set_defaults(func=cmd_wallet_create)
