"""Verification by teacher forcing: re-score a miner's tokens with the reference engine.

The validator tokenizes the conversation itself (the reference engine's ``/tokenize``
with the chat template), appends the miner's completion token ids, and asks the
reference engine for ``prompt_logprobs`` over the whole sequence in one prefill pass —
the cost of reading the answer, not of writing it. The per-token evidence goes to
``scoring.fidelity.check``. Nothing the miner says about the prompt is trusted: a
prompt tokenized differently (another template or tokenizer) fails on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import aiohttp

from scoring.fidelity import FidelityParams, ResponseEvidence, TokenEvidence, Verdict, check

TOP_K = 5  # reference logprobs per position: 20 cost 2.7× the verification time (0.244 vs 0.100 of generation) for no check that needs them


class ReferenceError(Exception):
    """The reference engine could not score a response (it is down, or refused the input)."""


@dataclass
class MinerResponse:
    """What a validator collected from one streamed answer (see ``collect``)."""

    prompt_token_ids: Optional[list[int]] = None
    token_ids: list[int] = field(default_factory=list)
    reported_logprobs: list[Optional[float]] = field(default_factory=list)
    text: str = ""
    finish_reason: Optional[str] = None
    completion_tokens: Optional[int] = None
    error: Optional[str] = None  # an error event ended the stream


def collect(events: Iterable[dict[str, Any]]) -> MinerResponse:
    """Fold the SSE events of a chat completion stream (``n`` = 1) into a MinerResponse."""
    response = MinerResponse()
    for event in events:
        if "error" in event:
            response.error = str(event["error"].get("message", event["error"]))
            continue
        if event.get("prompt_token_ids") is not None:
            response.prompt_token_ids = list(event["prompt_token_ids"])
        if event.get("usage"):
            response.completion_tokens = event["usage"].get("completion_tokens")
        for choice in event.get("choices") or []:
            ids = choice.get("token_ids") or []
            logprobs = ((choice.get("logprobs") or {}).get("content")) or []
            response.token_ids += ids
            reported = [entry.get("logprob") for entry in logprobs]
            # Chunks carry one logprob entry per token; pad when a miner sends fewer.
            response.reported_logprobs += reported + [None] * (len(ids) - len(reported))
            response.text += (choice.get("delta") or {}).get("content") or ""
            if choice.get("finish_reason"):
                response.finish_reason = choice["finish_reason"]
    return response


class ReferenceEngine:
    """The validator's own vLLM server for one model."""

    def __init__(self, session: aiohttp.ClientSession, url: str, model: str, end_token_ids: Iterable[int] = (), timeout: float = 120.0):
        self.session = session
        self.url = url.rstrip("/")
        self.model = model
        self.end_token_ids = frozenset(end_token_ids)  # from the model list; empty turns the end checks off
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self.session.post(self.url + path, json=body, timeout=self.timeout) as response:
                payload = await response.json(content_type=None)
                if response.status != 200:
                    raise ReferenceError(f"reference engine answered {response.status} to {path}: {json.dumps(payload)[:300]}")
                return payload
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ReferenceError(f"reference engine at {self.url} failed on {path}: {exc}") from exc

    async def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        payload = await self._post("/tokenize", {"model": self.model, "messages": messages, "add_generation_prompt": True})
        return list(payload["tokens"])

    async def score(self, prompt_ids: list[int], completion_ids: list[int]) -> list[dict[int, tuple[float, int]]]:
        """For each completion position: token id → (logprob, rank) for the top-K and the actual token."""
        body = {"model": self.model, "prompt": prompt_ids + completion_ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": TOP_K}
        payload = await self._post("/v1/completions", body)
        positions = payload["choices"][0]["prompt_logprobs"][len(prompt_ids):]
        return [{int(tid): (entry["logprob"], entry["rank"]) for tid, entry in position.items()} for position in positions]


async def verify(reference: ReferenceEngine, request: dict[str, Any], response: MinerResponse, params: FidelityParams = FidelityParams()) -> Verdict:
    """Teacher-force ``response`` to ``request`` (a chat completion body) on the reference engine."""
    prompt_ids = await reference.prompt_ids(request["messages"])
    if response.prompt_token_ids is not None and response.prompt_token_ids != prompt_ids:
        return Verdict(passed=False, reasons=("the miner's prompt tokens differ from the reference tokenization of the conversation",))
    if response.error is not None or response.finish_reason is None:
        return Verdict(passed=False, reasons=(f"the stream did not complete: {response.error or 'no finish_reason'}",))
    scores = await reference.score(prompt_ids, response.token_ids) if response.token_ids else []
    tokens = []
    for token_id, reported, position in zip(response.token_ids, response.reported_logprobs, scores):
        logprob, rank = position[token_id]
        top = {tid: lp for tid, (lp, r) in position.items() if r <= TOP_K}
        tokens.append(TokenEvidence(token_id, logprob, rank, top, reported))
    evidence = ResponseEvidence(
        tokens=tokens,
        finish_reason=response.finish_reason,
        max_tokens=request.get("max_tokens") or request.get("max_completion_tokens") or len(tokens),
        reported_completion_tokens=response.completion_tokens,
        temperature=float(request.get("temperature", 1.0)),
        top_p=float(request.get("top_p", 1.0)),
        logprobs_requested=bool(request.get("logprobs")),
        end_token_ids=reference.end_token_ids,
        end_checks=not (request.get("ignore_eos") or request.get("stop") or request.get("stop_token_ids")),
    )
    return check(evidence, params)
