"""One model list for the subnet, version keys and `slmnet doctor`, on a localnet through
the real CLI: the owner publishes the list's hash; a validator or gateway with another
list refuses to start and says which version the chain wants; a validator older than the
subnet's weights version refuses with the upgrade command; doctor names a fix for every
check that fails."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from models import subnet
from models.tiny import build_tiny
from tests.harness.processes import Server, free_port, http_status

TINY = "slmnet/tiny-qwen2-s0"


def slmnet(tmp_path: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurons.cli", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def other_list(tmp_path: Path) -> Path:
    """The localnet list with one edit: what a validator on a stale checkout would hold."""
    raw = json.loads(subnet.DEFAULT_LIST.read_text())
    raw["models"][1]["reward"] = 1.0
    path = tmp_path / "stale.json"
    path.write_text(subnet.dump(raw))
    return path


def owner_flags(localnet) -> list[str]:
    return ["--network", localnet.network, "--netuid", "1", "--wallet-path", str(localnet.dir / "wallets"), "--wallet-name", "owner"]


def test_only_the_owner_publishes_a_pinned_list_and_the_chain_then_holds_its_hash(localnet, tmp_path):
    localnet.register(["validator"])
    finney = slmnet(tmp_path, "owner", "publish-models", str(subnet.for_network("finney")), *owner_flags(localnet))
    assert finney.returncode == 1 and "unpinned models" in finney.stderr and "slmnet models pin" in finney.stderr
    stranger = slmnet(tmp_path, "owner", "publish-models", str(subnet.DEFAULT_LIST), *localnet.flags("validator"))
    assert stranger.returncode == 1 and "is not the owner's of subnet 1" in stranger.stderr
    unregistered = slmnet(tmp_path, "owner", "publish-models", str(subnet.DEFAULT_LIST), *owner_flags(localnet))
    assert unregistered.returncode == 1 and "a commitment needs a registered hotkey" in unregistered.stderr
    from chain.localnet import admin

    admin.fund(localnet.dir, json.loads((localnet.dir / "wallets" / "owner" / "coldkeypub.txt").read_text())["ss58Address"], 10)
    assert slmnet(tmp_path, "register", *owner_flags(localnet), "--yes").returncode == 0
    published = slmnet(tmp_path, "owner", "publish-models", str(subnet.DEFAULT_LIST), *owner_flags(localnet), "--json")
    assert published.returncode == 0, published.stderr
    models = subnet.load(subnet.DEFAULT_LIST)
    assert json.loads(published.stdout)["sha256"] == models.digest

    status = json.loads(slmnet(tmp_path, "localnet", "status", "--dir", str(localnet.dir), "--json").stdout)
    assert status["neurons"][-1]["hotkey"] != status["neurons"][0]["hotkey"]  # the owner now has a uid beside the validator

    stale = other_list(tmp_path)
    reference = ["--reference", f"{TINY}=http://127.0.0.1:9", "--state-dir", str(tmp_path / "v")]
    validator = slmnet(tmp_path, "validator", *localnet.flags("validator"), *reference, "--model-list", str(stale))
    assert validator.returncode == 1 and f"is not the one the subnet owner published (version {models.version}" in validator.stderr, validator.stderr[-2000:]
    build_tiny(tmp_path / "tiny", seed=0)
    bad_tokenizer = slmnet(tmp_path, "gateway", *localnet.flags("validator"), "--tokenizer", f"{TINY}={tmp_path / 'nothing'}")
    assert bad_tokenizer.returncode == 1 and "no tokenizer there" in bad_tokenizer.stderr and "Traceback" not in bad_tokenizer.stderr
    gateway = [
        "gateway",
        *localnet.flags("validator"),
        "--db",
        str(tmp_path / "g.sqlite"),
        "--tokenizer",
        f"{TINY}={tmp_path / 'tiny'}",
        "--port",
        str(free_port()),
    ]
    refused = slmnet(tmp_path, *gateway, "--model-list", str(stale))
    assert refused.returncode == 1 and "is not the one the subnet owner published" in refused.stderr, refused.stderr[-2000:]

    port = free_port()
    gateway[-1] = str(port)
    server = Server([sys.executable, "-m", "neurons.cli", *gateway], f"http://127.0.0.1:{port}", tmp_path / "gateway.log")
    try:
        deadline = time.monotonic() + 120
        while http_status(server.url + "/health") is None:  # 503 until a miner serves: up, with the published list
            assert server.child.returncode is None and time.monotonic() < deadline, server.log_tail()
            time.sleep(0.5)
    finally:
        server.stop()
    assert "published no model list" not in server.log_tail()


def test_a_validator_older_than_the_subnets_weights_version_refuses_with_the_upgrade(localnet, tmp_path):
    localnet.register(["validator"])
    assert slmnet(tmp_path, "localnet", "set", "--dir", str(localnet.dir), "weights_version", "999000000").returncode == 0
    reference = ["--reference", f"{TINY}=http://127.0.0.1:9", "--state-dir", str(tmp_path / "v")]
    old = slmnet(tmp_path, "validator", *localnet.flags("validator"), *reference)
    assert old.returncode == 1 and "requires version key 999000000" in old.stderr and "slmnet update" in old.stderr, old.stderr[-2000:]
    version = slmnet(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.startswith("slmnet 0.")


def test_doctor_names_the_fix_for_each_failure(localnet, tmp_path):
    def doctor(role: str, *flags: str) -> dict[str, dict]:
        done = slmnet(tmp_path, "doctor", "--role", role, "--json", *flags)
        checks = json.loads(done.stdout)
        assert (done.returncode == 0) == all(c["ok"] for c in checks)
        assert all(c["fix"] for c in checks if not c["ok"])  # every failure says what to do
        return {c["name"]: c for c in checks}

    no_wallet = doctor("gateway", *localnet.flags("nobody"))
    assert not no_wallet["wallet"]["ok"] and "slmnet wallet create" in no_wallet["wallet"]["fix"]
    localnet.wallet("fresh")
    unregistered = doctor("gateway", *localnet.flags("fresh"))
    assert (
        not unregistered["registered"]["ok"] and "slmnet register" in unregistered["registered"]["fix"] and "burns 1 TAO" in unregistered["registered"]["fix"]
    )
    localnet.register(["validator"])
    port = str(free_port())
    gateway = doctor("gateway", *localnet.flags("validator"), "--port", port, "--external-ip", "127.0.0.1", "--model-list", str(other_list(tmp_path)))
    assert not gateway["permit"]["ok"] and "slmnet localnet stake" in gateway["permit"]["fix"]
    assert gateway["model list"]["ok"]  # nothing published yet: the list is used unchecked, with a warning
    assert not gateway["gateway"]["ok"] and "nothing answers" in gateway["gateway"]["detail"]
    assert not gateway["announced"]["ok"] and "--external-ip" in gateway["announced"]["fix"]  # the chain shows no endpoint to call
    assert gateway["python"]["ok"] and gateway["bittensor"]["ok"] and gateway["vllm"]["ok"] and gateway["chain"]["ok"]
    miner = doctor("miner", *localnet.flags("validator"), "--model", "nowhere/model", "--engine-url", "http://127.0.0.1:9", "--port", str(free_port()))
    assert not miner["miner"]["ok"] and not miner["engine"]["ok"] and miner["stake"]["ok"]
    unreachable = doctor(
        "validator", "--network", "ws://127.0.0.1:9", "--netuid", "1", "--wallet-path", str(localnet.wallets_dir), "--wallet-name", "validator"
    )
    assert not unreachable["chain"]["ok"] and "--network" in unreachable["chain"]["fix"]
