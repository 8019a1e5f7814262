"""``slmnet validator``: flags → validator.config.ValidatorConfig → validator.service.run_validator."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from neurons.common import CliError, HelpFormatter, add_chain_flags, chain_config, given, load_model_list, model_folder, model_pairs, run_service
from shell.net import free_port


def add_parser(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser("validator", help="challenge miners, verify by teacher forcing, score, set weights", formatter_class=HelpFormatter)
    p.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "replay", "forgive"),
        help="run: validate; replay: recheck a recorded round (--round) on the reference engines and print where anything differs; "
        "forgive: lift a miner's flag and its evidence (--hotkey, --reason) from the next round on, recorded for replays",
    )
    add_chain_flags(p)
    p.add_argument("--round", type=int, default=None, help="replay: the round to recheck (default: the last recorded)")
    p.add_argument("--hotkey", default=None, metavar="SS58", help="forgive: the miner whose flag is lifted")
    p.add_argument("--reason", default=None, help="forgive: why (kept with the record)")
    p.add_argument("--state-dir", default="~/.slmnet/validator", help="SQLite state, rounds.jsonl, wandb runs")
    p.add_argument(
        "--model-list", default=None, help="the subnet's model list (default: models/lists/NETWORK.json; it must match the hash the owner published)"
    )
    p.add_argument("--reference", action="append", default=[], metavar="ID=URL", help="attach to a running reference vLLM server for model ID (repeatable)")
    p.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        metavar="ID=DIR",
        help="folder with model ID's tokenizer, which binds a miner's text to its token ids (default: the engine's folder, or the model list's source)",
    )
    p.add_argument(
        "--serve-reference", action="append", default=[], metavar="ID", help="start a reference engine for model ID from the model list (repeatable)"
    )
    p.add_argument(
        "--dtype",
        default="float32",
        help="vLLM --dtype of started reference engines: float32, the model itself (each miner's declared dtype sets its tolerance; "
        "vLLM's own 'auto' runs a float32 model in half precision on CPU, and would flag honest float32 miners)",
    )
    p.add_argument("--engine-arg", action="append", default=[], metavar="ARG", help="extra vLLM argument for started engines (repeatable)")
    p.add_argument("--challenges-per-miner", type=int, default=None, help="challenges each miner gets per round (default: ValidatorConfig's)")
    p.add_argument("--round-interval", type=float, default=None, help="seconds between round starts (default: ValidatorConfig's)")
    p.add_argument(
        "--probe-every",
        type=int,
        default=None,
        help="rounds between a model's capacity probes: all its miners at their declared concurrency (default: ValidatorConfig's)",
    )
    p.add_argument(
        "--probe-concurrency", type=int, default=None, help="the most requests a capacity probe sends one miner at once (default: ValidatorConfig's)"
    )
    p.add_argument("--weights-interval", type=int, default=None, help="blocks between weight settings (default: the tempo)")
    p.add_argument("--ttft-timeout", type=float, default=None, help="seconds a miner has to its first token (default: validator.query.Timeouts')")
    p.add_argument("--answer-timeout", type=float, default=None, help="seconds a miner has for a whole answer (default: validator.query.Timeouts')")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this loopback port")
    p.add_argument("--wandb-project", default=None, help="log rounds to wandb online (offline runs go to the state dir otherwise)")
    p.add_argument(
        "--organic-from",
        action="append",
        default=[],
        metavar="URL",
        help="a gateway's URL (repeatable: every gateway this validator trusts): each round, read what it did for users and the user answers it samples (signed HTTP; it must trust this hotkey: slmnet gateway --validator-hotkey), verify them, hand it the verdicts",
    )
    p.add_argument(
        "--trust-gateway",
        action="append",
        default=[],
        metavar="SS58",
        help="a gateway's hotkey (repeatable): read it wherever it announces itself on chain (a gateway's samples are its word for what miners sent: trust it as you would your own)",
    )
    p.add_argument("--max-rounds", type=int, default=None, help="stop after this many rounds in the state (smoke runs)")
    p.set_defaults(func=cmd_validator, default_log_level=logging.INFO)


ORGANIC_URL_ONLY = (
    "--organic-from {}: give the gateway's URL (e.g. http://127.0.0.1:8000). A validator reads a gateway over signed HTTP only, on the "
    "same machine too: its database file carries no service counts and takes no verdicts back, so reading it paid miners that cheat "
    "users (refusing them, or serving them another model) as honest ones"
)


def build_config(args: argparse.Namespace):
    from engine import EngineSpec
    from models.prepare import default_cache_dir
    from validator.config import ValidatorConfig
    from validator.query import Timeouts

    models = load_model_list(args.model_list, args.network)
    references = [(model_id, url.rstrip("/")) for model_id, url in model_pairs("--reference", args.reference, models)]
    engines = []
    for model_id in args.serve_reference:
        supported = models.get(model_id)
        if supported is None:
            raise CliError(f"--serve-reference {model_id!r} is not in the model list")
        folder = model_folder(supported.source, default_cache_dir())
        engines.append(
            EngineSpec(
                model=folder,
                served_name=model_id,
                port=free_port(),
                dtype=args.dtype,
                max_model_len=min(supported.max_context, 4096),
                extra_args=tuple(args.engine_arg),
            )
        )
    if not references and not engines:
        raise CliError("give at least one --reference ID=URL or --serve-reference ID")
    tokenizers = {spec.served_name: spec.model for spec in engines}
    tokenizers.update(model_pairs("--tokenizer", args.tokenizer, models))
    for model_id, _ in references:
        if model_id not in tokenizers:
            tokenizers[model_id] = model_folder(models.get(model_id).source, default_cache_dir())
    if bad := [url for url in args.organic_from if not url.startswith(("http://", "https://"))]:
        raise CliError(ORGANIC_URL_ONLY.format(bad[0]))
    return ValidatorConfig(
        chain=chain_config(args),
        state_dir=Path(args.state_dir).expanduser(),
        models=models,
        tokenizers=tuple(tokenizers.items()),
        references=tuple(references),
        engines=tuple(engines),
        **given(
            challenges_per_miner=args.challenges_per_miner,
            round_interval=args.round_interval,
            probe_every=args.probe_every,
            probe_concurrency=args.probe_concurrency,
        ),
        timeouts=Timeouts(**given(ttft=args.ttft_timeout, total=args.answer_timeout)),
        weights_interval_blocks=args.weights_interval,
        metrics_port=args.metrics_port,
        wandb_project=args.wandb_project,
        max_rounds=args.max_rounds,
        organic_from=tuple(args.organic_from),
        trust_gateways=tuple(args.trust_gateway),
    )


def cmd_validator(args: argparse.Namespace) -> None:
    import chain
    from shell.role import StartupError
    from validator.service import run_validator

    if args.action == "replay":
        return cmd_replay(args)
    if args.action == "forgive":
        return cmd_forgive(args)
    run_service(run_validator(build_config(args)), StartupError, chain.ChainLayerError)


def cmd_replay(args: argparse.Namespace) -> None:
    """Recheck one recorded round; exit status 1 when anything differs from the record."""
    from validator.replay import replay_with
    from validator.verify import ReferenceFailed

    try:
        replay = asyncio.run(replay_with(build_config(args), args.round))
    except (LookupError, ReferenceFailed) as exc:
        raise CliError(str(exc)) from exc
    print(f"round {replay.round}: {replay.answers} answers verified again, {replay.taken_as_recorded} taken as recorded (never reached the verifier)")
    for difference in replay.differences:
        print(f"  differs: {difference}")
    print("reproduced: verdicts, evidence, scores and flags equal the record" if replay.reproduced else f"{len(replay.differences)} difference(s)")
    if not replay.reproduced:
        raise SystemExit(1)


def cmd_forgive(args: argparse.Namespace) -> None:
    """Lift one miner's flag on purpose: its evidence starts afresh at the next round; logged and recorded."""
    from validator.store import Store

    if not args.hotkey or not args.reason:
        raise CliError("forgive needs --hotkey SS58 and --reason TEXT (kept with the record)")
    state = Path(args.state_dir).expanduser() / "validator.sqlite"
    if not state.is_file():
        raise CliError(f"no validator state at {state}: give the validator's --state-dir")
    store = Store(state)
    try:
        forgiven = store.forgive(args.hotkey, args.reason)
    finally:
        store.close()
    if forgiven is None:
        logging.getLogger("slmnet.validator").warning("forgave %s (%s): it had no evidence held; recorded anyway", args.hotkey, args.reason)
    else:
        logging.getLogger("slmnet.validator").warning(
            "forgave %s (%s): %s, %d answers, evidence %.1f",
            args.hotkey,
            args.reason,
            f"flagged since block {forgiven.flagged_block}" if forgiven.flagged else "not flagged",
            forgiven.answers,
            forgiven.cusum,
        )
    print(f"{args.hotkey}: forgiven; its evidence starts afresh at the validator's next round (recorded with it, for replays)")
