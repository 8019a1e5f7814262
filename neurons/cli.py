"""The `slmnet` command line: localnet administration, wallets, models.

Every read takes ``--json`` so scripts can use it; errors print one line on stderr
and exit 1 (2 for usage errors, from argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from neurons import gateway as gateway_cli
from neurons import miner as miner_cli
from neurons import up as up_cli
from neurons import validator as validator_cli
from neurons.common import CliError, add_chain_flags

log = logging.getLogger("slmnet")


def _emit(args: argparse.Namespace, payload: Any, human: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        human()


# --- localnet -------------------------------------------------------------------------


def cmd_localnet_init(args: argparse.Namespace) -> None:
    from chain.localnet import admin

    try:
        info = admin.init(Path(args.dir), netuid=args.netuid, tempo=args.tempo, block_time=args.block_time)
    except (FileExistsError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    _emit(
        args,
        info,
        lambda: print(
            f"localnet created in {info['dir']}: subnet {info['netuid']}, tempo {info['tempo']} blocks, "
            f"{info['block_time']} s per block\nowner coldkey {info['owner_coldkey']} (wallet 'owner' in {info['dir']}/wallets)\n"
            f"use it with --network localnet:{info['dir']}"
        ),
    )


def cmd_localnet_fund(args: argparse.Namespace) -> None:
    from chain.localnet import LocalnetMissing, admin

    try:
        free = admin.fund(Path(args.dir), args.coldkey, args.tao)
    except (LocalnetMissing, ValueError) as exc:
        raise CliError(str(exc)) from exc
    payload = {"coldkey": args.coldkey, "free_tao": free / 1e9}
    _emit(args, payload, lambda: print(f"{args.coldkey} now holds {free / 1e9:g} TAO"))


def cmd_localnet_stake(args: argparse.Namespace) -> None:
    from chain.localnet import LocalnetMissing, admin

    try:
        total = admin.stake(Path(args.dir), args.coldkey, args.hotkey, args.tao, netuid=args.netuid)
    except (LocalnetMissing, ValueError) as exc:
        raise CliError(str(exc)) from exc
    payload = {"hotkey": args.hotkey, "stake_tao": total / 1e9}
    _emit(args, payload, lambda: print(f"{args.hotkey} now has {total / 1e9:g} TAO of stake"))


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
    _emit(args, payload, lambda: _print_status(graph))


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
    _emit(args, payload, lambda: print(f"wallet {args.name}/{args.hotkey} in {path}\ncoldkey {payload['coldkey_ss58']}\nhotkey  {payload['hotkey_ss58']}"))


def cmd_register(args: argparse.Namespace) -> None:
    import bittensor as bt

    import chain

    wallet = bt.Wallet(args.wallet_name, args.wallet_hotkey, path=str(Path(args.wallet_path).expanduser()))

    async def register() -> int:
        async with chain.connect(args.network) as c:
            try:
                return await c.uid_of(args.netuid, wallet.hotkey.ss58_address)
            except chain.NotRegistered:
                pass
            (await c.register(wallet, args.netuid)).raise_for_failure()
            return await c.uid_of(args.netuid, wallet.hotkey.ss58_address)

    try:
        uid = asyncio.run(register())
    except chain.ChainLayerError as exc:
        raise CliError(str(exc)) from exc
    payload = {"netuid": args.netuid, "uid": uid, "hotkey": wallet.hotkey.ss58_address}
    _emit(args, payload, lambda: print(f"hotkey {payload['hotkey']} is uid {uid} on subnet {args.netuid}"))


# --- models ---------------------------------------------------------------------------


def cmd_models_tiny(args: argparse.Namespace) -> None:
    from models.tiny import build_tiny

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise CliError(f"{out} is not empty")
    digest = build_tiny(out, seed=args.seed)
    payload = {"path": str(out), "seed": args.seed, "weights_sha256": digest}
    _emit(args, payload, lambda: print(f"tiny model (seed {args.seed}) in {out}\nweights sha256 {digest}"))


def cmd_models_prepare(args: argparse.Namespace) -> None:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from models.prepare import STEPS, PrepareError, default_cache_dir, prepare

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    # A bar on a terminal; nothing but the result in CI and pipes.
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), disable=args.json or not sys.stderr.isatty(), console=Console(stderr=True)
    ) as progress:
        task = progress.add_task(f"preparing {args.name}", total=len(STEPS))

        def on_step(step: str) -> None:
            progress.update(task, description=f"{args.name}: {step}", completed=STEPS.index(step))

        try:
            out, manifest = prepare(args.name, cache, on_step=on_step)
        except PrepareError as exc:
            raise CliError(str(exc)) from exc
        progress.update(task, completed=len(STEPS))
    payload = {
        "path": str(out),
        "id": manifest.id,
        "revision": manifest.revision,
        "weights_sha256": manifest.weights_sha256,
        "max_context": manifest.max_context,
    }
    _emit(
        args, payload, lambda: print(f"{manifest.id} in {out}\nweights sha256 {manifest.weights_sha256}\nserve it with: slmnet miner --model {args.name} ...")
    )


# --- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slmnet", description="slmnet: small language models on Bittensor")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    groups = parser.add_subparsers(dest="group", required=True)

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

    wallet = groups.add_parser("wallet", help="wallets").add_subparsers(dest="command", required=True)
    create = wallet.add_parser("create", help="create a coldkey + hotkey without a password (development networks)")
    create.add_argument("--path", required=True, help="wallets folder")
    create.add_argument("--name", required=True, help="wallet (coldkey) name")
    create.add_argument("--hotkey", required=True, help="hotkey name")
    create.add_argument("--json", action="store_true", help="print JSON")
    create.set_defaults(func=cmd_wallet_create)

    register = groups.add_parser("register", help="register a hotkey on a subnet (burned registration, paid by its coldkey); no-op when registered")
    add_chain_flags(register)
    register.add_argument("--json", action="store_true", help="print JSON")
    register.set_defaults(func=cmd_register)

    models = groups.add_parser("models", help="prepare models").add_subparsers(dest="command", required=True)
    tiny = models.add_parser("tiny", help="build a tiny random Qwen2 model with an offline-trained tokenizer")
    tiny.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    tiny.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical weights")
    tiny.add_argument("--json", action="store_true", help="print JSON")
    tiny.set_defaults(func=cmd_models_tiny)

    prep = models.add_parser("prepare", help="prepare a real model offline (fp32 safetensors from a packaged GGUF) into the cache")
    prep.add_argument("name", help="smollm2-135m")
    prep.add_argument("--cache-dir", default=None, help="cache folder (default $SLMNET_CACHE or ~/.cache/slmnet)")
    prep.add_argument("--json", action="store_true", help="print JSON")
    prep.set_defaults(func=cmd_models_prepare)

    miner_cli.add_parser(groups)
    validator_cli.add_parser(groups)
    gateway_cli.add_parser(groups)
    up_cli.add_parser(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else getattr(args, "log_level", logging.WARNING), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        args.func(args)
    except CliError as exc:
        print(f"slmnet: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
