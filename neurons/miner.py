"""``slmnet miner``: flags → MinerConfig → miner.service.run_miner."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from neurons.common import CliError, HelpFormatter, add_chain_flags, chain_config, given, run_service
from shell.net import free_port
from signed import CALLER_MIN_STAKE_TAO

if TYPE_CHECKING:  # imported inside build_config at run time: heavy
    from miner.config import MinerConfig


def add_parser(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser("miner", help="serve a model through vLLM behind an authenticated endpoint", formatter_class=HelpFormatter)
    add_chain_flags(p)
    p.add_argument("--model", required=True, help="a model folder (from `slmnet models`), a prepared model name (smollm2-135m), or a Hugging Face id")
    p.add_argument("--revision", default=None, help="Hugging Face revision to serve and declare (with a hub id)")
    p.add_argument("--port", type=int, default=8091, help="port of the miner's HTTP endpoint")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--external-ip", default="127.0.0.1", help="IPv4 address announced on chain (your public address on a real network)")
    p.add_argument("--external-port", type=int, default=None, help="port announced on chain, where a port mapping forwards to --port (default: --port)")
    engine = p.add_argument_group("engine", "start and supervise a vLLM server on loopback, or attach to one with --engine-url")
    engine.add_argument("--engine-url", default=None, help="attach to this running vLLM OpenAI server (it must serve the declared model id)")
    engine.add_argument("--engine-port", type=int, default=0, help="loopback port for the started engine (0: any free port)")
    engine.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="vLLM --dtype, declared on chain: validators judge drift with this dtype's tolerance (float32 on CPU, bfloat16 on GPU)",
    )
    engine.add_argument("--max-model-len", type=int, default=None, help="vLLM --max-model-len, also the declared max context")
    engine.add_argument(
        "--engine-arg", action="append", default=[], metavar="ARG", help="extra vLLM argument, repeatable (e.g. --engine-arg=--gpu-memory-utilization=0.9)"
    )
    engine.add_argument("--engine-log", default=None, help="append the engine's output to this file")
    limits = p.add_argument_group("admission")
    limits.add_argument("--capacity", type=int, default=None, help="requests in flight at once (declared on chain; default: MinerConfig.capacity)")
    limits.add_argument("--max-in-flight-per-caller", type=int, default=None, help="requests in flight per calling hotkey (default: capacity)")
    limits.add_argument("--min-stake", type=float, default=None, help=f"TAO a caller without a validator permit must hold (default: {CALLER_MIN_STAKE_TAO:g})")
    p.add_argument(
        "--metrics-token",
        default=None,
        help="who may scrape /metrics unsigned: whoever sends Authorization: Bearer TOKEN (default $SLMNET_METRICS_TOKEN; unset: this host only)",
    )
    limits.add_argument("--max-body-bytes", type=int, default=None, help="largest request body accepted (default: MinerConfig.max_body_bytes)")
    p.add_argument("--metagraph-interval", type=float, default=None, help="seconds between metagraph refreshes (default: MinerConfig.metagraph_interval)")
    p.set_defaults(func=cmd_miner, default_log_level=logging.INFO)


def resolve_model(model: str, revision: Optional[str], cache_dir: Path) -> tuple[str, str, Optional[str], Optional[str], Optional[int]]:
    """(what the engine loads, declared id, revision, weights sha256, max context) for ``--model``."""
    from models.manifest import ModelManifest
    from models.prepare import PREPARED

    path = Path(model).expanduser()
    if not path.is_dir() and model in PREPARED:
        path = cache_dir / "models" / model
        if not path.is_dir():
            raise CliError(f"{model} is not prepared yet: run `slmnet models prepare {model}`")
    if path.is_dir():
        try:
            manifest = ModelManifest.read(path)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        if manifest is None:
            raise CliError(f"{path} has no slmnet.json: build it with `slmnet models`, or pass a Hugging Face id")
        return str(path.resolve()), manifest.id, manifest.revision, manifest.weights_sha256, manifest.max_context
    return model, model, revision, None, None


def build_config(args: argparse.Namespace) -> MinerConfig:
    from engine import EngineSpec
    from miner.config import MinerConfig
    from models.prepare import default_cache_dir

    source, model_id, revision, digest, manifest_context = resolve_model(args.model, args.revision, default_cache_dir())
    max_context = args.max_model_len or manifest_context or 2048
    engine = None
    if args.engine_url is None:
        engine = EngineSpec(
            model=source,
            served_name=model_id,
            port=args.engine_port or free_port(),
            revision=revision if source == model_id else None,
            dtype=args.dtype,
            max_model_len=max_context,
            extra_args=tuple(args.engine_arg),
            log_path=Path(args.engine_log) if args.engine_log else None,
        )
    try:
        return MinerConfig(
            chain=chain_config(args),
            port=args.port,
            host=args.host,
            external_ip=args.external_ip,
            external_port=args.external_port,
            engine=engine,
            engine_url=args.engine_url,
            model_id=model_id,
            revision=revision,
            weights_sha256=digest,
            dtype=args.dtype,
            max_context=max_context,
            metrics_token=args.metrics_token or os.environ.get("SLMNET_METRICS_TOKEN"),  # the environment keeps it out of `ps`
            **given(
                capacity=args.capacity,
                max_in_flight_per_caller=args.max_in_flight_per_caller,
                min_stake=args.min_stake,
                max_body_bytes=args.max_body_bytes,
                metagraph_interval=args.metagraph_interval,
            ),
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def cmd_miner(args: argparse.Namespace) -> None:
    import chain
    from miner.service import run_miner
    from shell.role import StartupError

    run_service(run_miner(build_config(args)), StartupError, chain.ChainLayerError)
