"""The gateway's side of the hand-over with its validator, over signed HTTP (no shared disk).

- ``GET /v1/organic/samples?after=ID&limit=N``: the sampled user answers after ``ID``
  (``protocol.records.OrganicSamples``), oldest first, at most ``N`` (≤ ``MAX_SAMPLES``).
- ``GET /v1/organic/service``: what each miner did for users (``protocol.records.ServiceReports``):
  answers and tokens served, requests refused (429 while under its declared capacity here)
  and failed, running counts from the shared ledger.
- ``POST /v1/organic/verdicts``: what the validator's evidence says of each miner now
  (``protocol.records.MinerVerdicts``). The gateway keeps each validator's in its SQLite
  (every worker reloads them within a health tick) and applies them at once in this one,
  combined with the other validators' (``router.combine``: a miner any of them holds out
  stays out): a flagged or failing miner gets no user from the next request on, and a
  suspect one (new, or with rising evidence) has more of its answers sampled
  (``Router.verify_share``).

Each is a btauth/1 request addressed to the gateway's hotkey and signed by a validator
hotkey it trusts: to read, by default its own (which the local subnet's validator shares)
and every hotkey with a validator permit on the subnet, so every validator sees the same
service picture; to post verdicts, its own only (they take miners out of its routing).
``--validator-hotkey`` names exactly which validators may do both instead. Anything else is answered 401 (no or bad signature, stale, replayed,
misaddressed) or 403 (a signer it does not trust), and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from pydantic import ValidationError

from gateway.errors import BadRequest
from gateway.state import STATE, GatewayState
from protocol.errors import Forbidden
from protocol.records import MinerVerdicts, OrganicSamples, ServiceReports

log = logging.getLogger(__name__)
MAX_SAMPLES = 256  # per read: a bounded answer whatever the validator asks for
MAX_VERDICTS_BYTES = 8 << 20


async def _validator(request: web.Request, body: bytes = b"", verdicts: bool = False) -> str:
    """The trusted validator hotkey that signed ``request``; Unauthorized (401) or Forbidden (403), as a miner answers, otherwise. Reading
    (samples, service counts) is open to every validator with a permit by default; posting ``verdicts``,
    which take miners out of this gateway's routing, only to the validators named (or this hotkey's own):
    one permit holder must not be able to hold honest miners out of every gateway's users."""
    state: GatewayState = request.app[STATE]
    sender = state.signatures.sender(request.headers, body, request.method, request.path_qs)  # the query is signed too
    named = state.settings.validator_hotkeys or (state.keypair.ss58_address,)
    trusted = named if verdicts or state.settings.validator_hotkeys else (*named, *state.permitted)
    if sender not in trusted:
        raise Forbidden(
            f"{sender} is not a validator this gateway hands its users' answers to (a validator permit, or --validator-hotkey)", "validator_not_trusted"
        )
    return sender


def _int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(raw)


async def samples(request: web.Request) -> web.Response:
    await _validator(request)
    after, limit = _int(request, "after", 0), min(_int(request, "limit", 32), MAX_SAMPLES)
    state: GatewayState = request.app[STATE]
    await state.ledger.synced()
    found, skipped = await asyncio.to_thread(state.store.samples_after, after, limit)  # off the loop: users' streams go on
    return web.Response(text=OrganicSamples(samples=found, skipped=skipped).model_dump_json(), content_type="application/json")


async def service(request: web.Request) -> web.Response:
    await _validator(request)
    state: GatewayState = request.app[STATE]
    await state.ledger.synced()
    reports = ServiceReports(miners=await asyncio.to_thread(state.store.service_reports))
    return web.Response(text=reports.model_dump_json(), content_type="application/json")


async def verdicts(request: web.Request) -> web.Response:
    body = await request.content.read(MAX_VERDICTS_BYTES + 1)
    if len(body) > MAX_VERDICTS_BYTES:
        raise BadRequest(f"verdicts over {MAX_VERDICTS_BYTES} bytes")
    sender = await _validator(request, body, verdicts=True)
    try:
        posted = MinerVerdicts.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(f"not a MinerVerdicts record: {exc.errors()[0]['msg']}") from exc
    state: GatewayState = request.app[STATE]
    await asyncio.to_thread(state.store.save_verdicts, sender, posted.verdicts)
    state.router.apply_verdicts((sender, v) for v in posted.verdicts)
    out = [v for v in posted.verdicts if v.standing != "ok"]
    if out:
        log.warning("validator %s (round %s): %s out of routing", sender, posted.round, ", ".join(f"uid {v.uid} {v.standing}" for v in out))
    return web.json_response({"applied": len(posted.verdicts)})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/organic/samples", samples)
    app.router.add_get("/v1/organic/service", service)
    app.router.add_post("/v1/organic/verdicts", verdicts)
