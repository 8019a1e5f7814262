"""``slmnet owner publish-models`` and ``slmnet models pin``: one model list for the subnet.

The list ships in the repo (``models/lists/NETWORK.json``); its owner publishes the
list's sha256 as the commitment of the subnet owner's hotkey, and every validator and
gateway refuses to run with a list whose hash differs. Only pinned lists are published:
each hub model with the revision and the sha256 of its weights.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from neurons.common import CliError, add_chain_flags, chain_config, emit


def add_parsers(groups: argparse._SubParsersAction, models: argparse._SubParsersAction) -> None:
    owner = groups.add_parser("owner", help="what the subnet owner does").add_subparsers(dest="command", required=True)
    publish = owner.add_parser("publish-models", help="publish a model list's hash as the owner hotkey's commitment")
    publish.add_argument("file", help="the model list, e.g. models/lists/finney.json")
    add_chain_flags(publish)
    publish.add_argument("--json", action="store_true", help="print JSON")
    publish.set_defaults(func=cmd_publish_models)

    pin = models.add_parser("pin", help="fill a hub model's revision and weights sha256 in a model list (needs the Hugging Face hub)")
    pin.add_argument("id", help="the model's id in the list")
    pin.add_argument("--list", required=True, dest="list_file", help="the model list to update in place")
    pin.add_argument("--revision", default="main", help="the hub revision to pin (a branch, tag or commit)")
    pin.add_argument("--json", action="store_true", help="print JSON")
    pin.set_defaults(func=cmd_models_pin)


def cmd_publish_models(args: argparse.Namespace) -> None:

    import chain
    from models import subnet

    try:
        models = subnet.load(Path(args.file))
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if unpinned := models.unpinned():
        raise CliError(f"{args.file} has unpinned models (no revision or weights sha256): {', '.join(unpinned)}; run `slmnet models pin ID --list {args.file}`")
    wallet = chain_config(args).wallet()
    hotkey = wallet.hotkey.ss58_address

    async def publish() -> int:
        async with chain.connect(args.network) as c:
            graph = await c.metagraph(args.netuid)
            if hotkey != graph.owner_hotkey:
                raise CliError(f"hotkey {hotkey} is not the owner's of subnet {args.netuid} ({graph.owner_hotkey}): use the owner's wallet")
            try:
                await c.uid_of(args.netuid, hotkey)
            except chain.NotRegistered as exc:
                raise CliError(
                    f"{exc}: a commitment needs a registered hotkey (subtensor registers the owner's when the subnet is created; "
                    "on a localnet run `slmnet register` with the owner wallet)"
                ) from exc
            (await c.commit(wallet, args.netuid, models.commitment)).raise_for_failure()
            return await c.block()

    try:
        block = asyncio.run(publish())
    except chain.ChainLayerError as exc:
        raise CliError(str(exc)) from exc
    payload = {"netuid": args.netuid, "version": models.version, "sha256": models.digest, "commitment": models.commitment, "block": block}
    emit(args, payload, lambda: print(f"subnet {args.netuid} now requires model list version {models.version} (sha256 {models.digest}) from block {block}"))


def cmd_models_pin(args: argparse.Namespace) -> None:
    from models import subnet

    path = Path(args.list_file)
    try:
        raw = json.loads(path.read_text())
        entry = next(m for m in raw["models"] if m["id"] == args.id)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CliError(f"{path} is not a model list: {exc}") from exc
    except StopIteration:
        raise CliError(f"{args.id} is not in {path}") from None
    if ":" in entry["source"]:
        raise CliError(f"{args.id} comes from {entry['source']}, not the hub: its weights hash is pinned when it is built")
    revision, digest = hub_pin(entry["source"], args.revision)
    entry["revision"], entry["weights_sha256"] = revision, digest
    path.write_text(subnet.dump(raw))
    payload = {"id": args.id, "revision": revision, "weights_sha256": digest, "list": str(path)}
    emit(args, payload, lambda: print(f"{args.id} pinned at {revision}, weights sha256 {digest}; bump the list's version before publishing it"))


def hub_pin(repo_id: str, revision: str) -> tuple[str, str]:
    """(commit, sha256 over the safetensors files in name order) of a hub model, as a miner's
    ``weights_sha256`` computes it: from the hub's LFS hashes for one file, by download otherwise."""
    from huggingface_hub import HfApi, snapshot_download

    from models.manifest import weights_sha256

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:  # the hub client's errors (HTTP, DNS, offline mode) share no base class we can name
        raise CliError(f"the Hugging Face hub did not answer for {repo_id}@{revision} ({type(exc).__name__}: {exc}); pin where the hub is reachable") from exc
    files = sorted((s for s in info.siblings or [] if s.rfilename.endswith(".safetensors") and "/" not in s.rfilename), key=lambda s: s.rfilename)
    if not files:
        raise CliError(f"{repo_id}@{revision} has no safetensors weights at its top level")
    if len(files) == 1 and files[0].lfs is not None:
        return info.sha or revision, files[0].lfs.sha256
    try:
        folder = snapshot_download(repo_id, revision=info.sha, allow_patterns=["*.safetensors"])
    except Exception as exc:  # as above
        raise CliError(f"downloading {repo_id}@{info.sha} to hash its weights failed ({type(exc).__name__}: {exc})") from exc
    return info.sha or revision, weights_sha256(Path(folder))
