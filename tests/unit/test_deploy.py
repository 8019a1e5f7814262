"""The systemd units and the pm2 file under deploy/ start what `slmnet` accepts: each unit
parses, its ExecStart (with the variables of its env file) parses with slmnet's own parser
as the role it names, and so does every pm2 app's command line."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from neurons.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROLES = ("miner", "validator", "gateway")


def _env(path: Path) -> dict[str, str]:
    """An EnvironmentFile as systemd reads it: KEY=VALUE lines, whole-line # comments only."""
    pairs = (line.partition("=") for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v for k, sep, v in pairs if sep}


def _parses_as(role: str, argv: list[str]) -> None:
    args, rest = build_parser().parse_known_args(argv)
    assert args.group == role and not rest, (role, rest)
    if role == "validator":  # a validator reads its gateway over signed HTTP: a database file would pay cheats of users
        assert args.organic_from and all(url.startswith("http") for url in args.organic_from), args.organic_from
        assert args.dtype == "float32"  # the reference is the model itself: a miner's declared dtype sets its drift from it
    if role == "gateway":  # announced on chain: every validator with a permit reads what it saw
        assert args.external_ip


@pytest.mark.parametrize("role", ROLES)
def test_systemd_unit_runs_the_role_with_flags_slmnet_accepts(role):
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str
    unit.read(DEPLOY / "systemd" / f"slmnet-{role}.service")
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["Restart"] == "always" and service["KillSignal"] == "SIGTERM"
    env_file = service["EnvironmentFile"]
    assert env_file == f"/etc/slmnet/{role}.env"
    env = _env(DEPLOY / "systemd" / f"{role}.env")
    used = set(re.findall(r"\$\{(\w+)\}", service["ExecStart"]))
    assert used <= set(env), f"{role}.env lacks {used - set(env)}"
    argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], service["ExecStart"]))
    assert argv[0].endswith("/.venv/bin/slmnet")
    _parses_as(role, argv[1:])


def test_pm2_ecosystem_runs_every_role_with_flags_slmnet_accepts():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: pm2 files are JavaScript")
    script = f"console.log(JSON.stringify(require({json.dumps(str(DEPLOY / 'pm2' / 'ecosystem.config.js'))})))"
    apps = json.loads(subprocess.run([node, "-e", script], capture_output=True, text=True, check=True, timeout=30).stdout)["apps"]
    assert sorted(a["name"] for a in apps) == sorted(f"slmnet-{r}" for r in ROLES)
    for app in apps:
        assert app["script"].endswith("/.venv/bin/slmnet") and app["interpreter"] == "none" and app["autorestart"]
        _parses_as(app["name"].removeprefix("slmnet-"), app["args"])


@pytest.mark.parametrize("role", ROLES)
def test_each_roles_grafana_dashboard_reads_only_series_the_role_exports(role):
    """deploy/grafana/ROLE.json: a dashboard Grafana imports, each panel's query on a series the role's /metrics serves."""
    from gateway.state import GatewayMetrics
    from miner.metrics import MinerMetrics
    from validator.journal import ValidatorMetrics

    registry = {"miner": MinerMetrics, "validator": ValidatorMetrics, "gateway": GatewayMetrics}[role]().registry
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}  # labelled ones have no sample yet
    exported = {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}
    dashboard = json.loads((DEPLOY / "grafana" / f"{role}.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"] for name in re.findall(r"slmnet_\w+", target["expr"])}
    assert dashboard["panels"] and queried and queried <= exported, queried - exported


def test_an_update_installs_the_engine_of_the_host_and_restarts_what_runs_there():
    from neurons.update import plan

    gpu = plan(Path("/opt/slmnet"), True, ["slmnet-miner.service"], [])
    cpu = plan(Path("/opt/slmnet"), False, [], ["slmnet-gateway"])
    assert gpu[0] == cpu[0] == ["git", "-C", "/opt/slmnet", "pull", "--ff-only"]  # a fast-forward, never a merge on a node
    assert gpu[1][-1] == "/opt/slmnet[gpu]" and not any("make" in step for step in gpu)  # never the CPU stack on a GPU host
    assert cpu[1] == ["make", "-C", "/opt/slmnet", "install"] and not any("[gpu]" in " ".join(step) for step in cpu)
    assert gpu[2:] == [["systemctl", "restart", "slmnet-miner.service"]] and cpu[2:] == [["pm2", "restart", "slmnet-gateway"]]
    parsed = build_parser().parse_args(["update", "--dry-run", "--no-gpu"])
    assert parsed.group == "update" and parsed.dry_run and parsed.gpu is False
