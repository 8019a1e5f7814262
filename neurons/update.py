"""``slmnet update``: pull the code, install the engine this host runs, restart the running roles.

The install follows the host: on a GPU host (``nvidia-smi`` answers) the official engine
(``pip install -e ".[gpu]"``), never the CPU stack; elsewhere ``make install`` (the CPU wheel of
torch, then the lock). The roles restarted are the slmnet units systemd or pm2 runs on this host.
``--dry-run`` prints the plan and runs nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from neurons.common import CliError

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "slmnet update"  # what a node refusing a newer version tells its operator to run
ROLES = ("slmnet-miner", "slmnet-validator", "slmnet-gateway")


def plan(root: Path, gpu: bool, systemd_units: list[str], pm2_apps: list[str]) -> list[list[str]]:
    """The commands an update runs, in order."""
    install = [str(root / ".venv" / "bin" / "pip"), "install", "--quiet", "-e", f"{root}[gpu]"] if gpu else ["make", "-C", str(root), "install"]
    steps = [["git", "-C", str(root), "pull", "--ff-only"], install]
    steps += [["systemctl", "restart", unit] for unit in systemd_units]
    steps += [["pm2", "restart", app] for app in pm2_apps]
    return steps


def _gpu_host() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0


def _running_units() -> list[str]:
    if shutil.which("systemctl") is None:
        return []
    done = subprocess.run(["systemctl", "is-active", *(f"{role}.service" for role in ROLES)], capture_output=True, text=True, timeout=30)
    return [f"{role}.service" for role, state in zip(ROLES, done.stdout.split()) if state == "active"]


def _pm2_apps() -> list[str]:
    if shutil.which("pm2") is None:
        return []
    done = subprocess.run(["pm2", "jlist"], capture_output=True, text=True, timeout=30)
    return [role for role in ROLES if f'"name":"{role}"' in done.stdout]


def cmd_update(args: argparse.Namespace) -> None:
    steps = plan(ROOT, args.gpu if args.gpu is not None else _gpu_host(), _running_units(), _pm2_apps())
    for step in steps:
        print("$", " ".join(step))
        if args.dry_run:
            continue
        if subprocess.run(step).returncode != 0:
            raise CliError(f"`{' '.join(step)}` failed: nothing after it was run; fix it and run `{COMMAND}` again")


def add_parser(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser("update", help="pull, install this host's engine (GPU or CPU), restart the slmnet units it runs")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None, help="the engine to install (default: --gpu where nvidia-smi sees a GPU)")
    p.set_defaults(func=cmd_update)
