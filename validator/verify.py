"""Verification by teacher forcing: re-score a miner's tokens with the reference engine.

The validator tokenizes the conversation itself (the reference engine's ``/tokenize``
with the chat template), appends the miner's completion token ids, and asks the
reference engine for ``prompt_logprobs`` over the whole sequence in one prefill pass —
the cost of reading the answer, not of writing it. The per-token evidence goes to
``scoring.fidelity.check``. Nothing the miner says about the prompt is trusted: a
prompt tokenized differently (another template or tokenizer) fails on its own.

Before the reference engine sees anything, the answer is bound to its ids with the
model's own tokenizer by the rule the gateway applies to every chunk
(``models.tokenizer``): every id must exist and fit the context, and the text the miner
showed must be what those ids spell. What the grader and the user read is then what the
verifier checked.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace
from typing import Any, Iterable, Optional, Union

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from models.tokenizer import ModelTokenizer, binding_reasons
from protocol.records import AnswerRecord
from protocol.responses import StreamFold
from protocol.structured import grammar_of
from scoring.evidence import TOLERANCES, Tolerance, answer_stats
from scoring.fidelity import FidelityParams, ResponseEvidence, TokenEvidence, Verdict, check
from validator.grammar import Allowed, GrammarBook

TOP_K = 5  # reference logprobs per position: 20 cost 2.7× the verification time (0.244 vs 0.100 of generation) for no check that needs them
# Under a grammar more: the top tokens the grammar forbids are dropped, and the allowed ones bound the mass a reported logprob is renormalized by.
TOP_K_UNDER_GRAMMAR = 20


class ReferenceFailed(Exception):
    """The reference engine could not score a response (it is down, or refused the input)."""


def collect(events: Iterable[dict[str, Any]], max_tokens: int = 1 << 20) -> AnswerRecord:
    """Fold already-decoded events of a chat completion stream (``n`` = 1) into an answer;
    StreamViolation when they break the protocol."""
    fold = StreamFold(chat=True, max_tokens=max_tokens)
    for event in events:
        fold.add(json.dumps(event))
    return AnswerRecord.from_fold(fold)


class ReferenceEngine:
    """The validator's own vLLM server for one model, and that model's tokenizer."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        model: str,
        tokenizer: ModelTokenizer,
        end_token_ids: Iterable[int] = (),
        max_context: int = 1 << 30,
        timeout: float = 120.0,
    ):
        self.session = session
        self.url = url.rstrip("/")
        self.model = model
        self.tokenizer = tokenizer
        self.end_token_ids = frozenset(end_token_ids)  # from the model list; empty turns the end checks off
        self.max_context = max_context
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._grammars: Optional[GrammarBook] = None

    @property
    def grammars(self) -> GrammarBook:
        """The model's grammar compiler, built on first use (a tokenizer's tables: ~1 s for a 49k vocabulary)."""
        if self._grammars is None:
            self._grammars = GrammarBook(self.tokenizer, self.end_token_ids)
        return self._grammars

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        # A pooled keep-alive connection the server has just closed fails at once ("Server
        # disconnected"): asked again on a fresh one, twice at most.
        retrying = AsyncRetrying(retry=retry_if_exception_type(aiohttp.ServerDisconnectedError), stop=stop_after_attempt(3), wait=wait_fixed(0.2), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    async with self.session.post(self.url + path, json=body, timeout=self.timeout) as response:
                        raw = await response.read()
                        if response.status != 200:
                            raise ReferenceFailed(f"reference engine answered {response.status} to {path}: {raw[:300]!r}")
            # prompt_logprobs for a long answer are ~1 MB of JSON: parsed off the event loop, so the
            # arrival times of the miners' streams read meanwhile stay true.
            return await asyncio.to_thread(json.loads, raw)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ReferenceFailed(f"reference engine at {self.url} failed on {path}: {exc}") from exc

    async def prompt_ids(self, messages: list[dict[str, Any]], continue_final: bool = False) -> list[int]:
        """The conversation as the engine feeds it: with the generation prompt, or (``continue_final``: a gateway's
        continuation of an answer another miner began) continuing its last, partial assistant turn."""
        body = {"model": self.model, "messages": messages, "add_generation_prompt": not continue_final, "continue_final_message": continue_final}
        payload = await self._post("/tokenize", body)
        return list(payload["tokens"])

    async def text_prompt_ids(self, prompt: str) -> list[int]:
        """A text completion's prompt as the engine feeds it."""
        payload = await self._post("/tokenize", {"model": self.model, "prompt": prompt})
        return list(payload["tokens"])

    async def score(self, prompt_ids: list[int], completion_ids: list[int], top_k: int = TOP_K) -> list[dict[int, tuple[float, int]]]:
        """For each completion position: token id → (logprob, rank) for the top-K and the actual token."""
        body = {"model": self.model, "prompt": prompt_ids + completion_ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": top_k}
        payload = await self._post("/v1/completions", body)
        try:
            positions = payload["choices"][0]["prompt_logprobs"][len(prompt_ids) :]
            return [{int(tid): (entry["logprob"], entry["rank"]) for tid, entry in position.items()} for position in positions]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ReferenceFailed(f"reference engine at {self.url} sent prompt_logprobs this validator cannot read: {exc!r}") from exc


def _given(request: dict[str, Any], name: str, default: float) -> float:
    """A sampling field as the engine reads it: absent and null both mean the default."""
    value = request.get(name)
    return default if value is None else value


def sampler_checkable(request: dict[str, Any]) -> bool:
    """Whether the verifiable sampler's choice can be recomputed for this request: a seed, and no
    filter or penalty beyond temperature and top_p (the check models those two only)."""
    top_k, min_p = request.get("top_k"), request.get("min_p")
    penalties = (_given(request, "presence_penalty", 0.0), _given(request, "frequency_penalty", 0.0), _given(request, "repetition_penalty", 1.0) - 1.0)
    return request.get("seed") is not None and top_k in (None, 0, -1) and not min_p and not any(penalties) and not request.get("logit_bias")


def _shows_its_stop(request: dict[str, Any], text: str) -> bool:
    """Whether the text ends with one of the request's stop strings, where it asked to see them (``include_stop_str_in_output``)."""
    stop = request.get("stop")
    return bool(request.get("include_stop_str_in_output")) and any(text.endswith(s) for s in ([stop] if isinstance(stop, str) else stop or []))


def _failed(reason: str) -> Verdict:
    return Verdict(passed=False, reasons=(reason,))


async def gather(reference: ReferenceEngine, request: dict[str, Any], response: AnswerRecord) -> Union[ResponseEvidence, Verdict]:
    """Teacher-force ``response`` to ``request`` (a chat or text completion body) on the reference engine:
    the evidence to judge, or the failed verdict when the answer cannot even be scored.
    ReferenceFailed when the reference itself fails: then nothing is known about the miner."""
    if isinstance(request.get("prompt"), str):  # a user's text completion, sampled by a gateway
        prompt_ids = await reference.text_prompt_ids(request["prompt"])
    else:
        prompt_ids = await reference.prompt_ids(request["messages"], bool(request.get("continue_final_message")))
    if response.prompt_token_ids is not None and response.prompt_token_ids != prompt_ids:
        return _failed("the miner's prompt tokens differ from the reference tokenization of the conversation")
    if response.error is not None or response.finish_reason is None:
        return _failed(f"the stream did not complete: {response.error or 'no finish_reason'}")
    last = response.token_ids[-1] if response.token_ids else None
    ended_by = last if response.finish_reason == "stop" and last in reference.end_token_ids else None
    bound = await asyncio.to_thread(
        binding_reasons, reference.tokenizer, response.token_ids, response.text, request.get("stop"), len(prompt_ids), reference.max_context, ended_by
    )
    if bound.reasons:
        return _failed(bound.reasons[0])
    stop_ids = request.get("stop_token_ids") or ()
    grammar, allowed = grammar_of(request), None
    if grammar is not None:
        # (the grammar book built, on first use, off the event loop too: a large vocabulary's tables take a second)
        walked = await asyncio.to_thread(lambda: reference.grammars.walk(grammar, response.token_ids, stop_ids))
        if isinstance(walked, str):
            return _failed(walked)
        allowed = walked
    top_k = TOP_K if grammar is None else TOP_K_UNDER_GRAMMAR
    scores = await reference.score(prompt_ids, response.token_ids, top_k) if response.token_ids else []
    if len(scores) != len(response.token_ids) or any(token_id not in position for token_id, position in zip(response.token_ids, scores)):
        raise ReferenceFailed("the reference engine scored other positions than it was given")
    tokens = []
    for index, (token_id, reported, position) in enumerate(zip(response.token_ids, response.reported(), scores)):
        logprob, rank = position[token_id]
        top = {tid: lp for tid, (lp, r) in position.items() if r <= top_k}
        if allowed is None:
            tokens.append(TokenEvidence(token_id, logprob, rank, top, reported))
        else:
            tokens.append(_under_grammar(token_id, logprob, top, reported, allowed[index]))
    return ResponseEvidence(
        tokens=tokens,
        finish_reason=response.finish_reason,
        max_tokens=request.get("max_tokens") or request.get("max_completion_tokens") or len(tokens),
        reported_completion_tokens=response.completion_tokens,
        temperature=float(_given(request, "temperature", 1.0)),
        top_p=float(_given(request, "top_p", 1.0)),
        logprobs_requested=bool(request.get("logprobs")) and "messages" in request,  # a text completion's are not kept
        end_token_ids=reference.end_token_ids,
        end_checks=not request.get("ignore_eos"),
        own_stop=bound.on_stop or last in stop_ids or _shows_its_stop(request, response.text),
        seed=request.get("seed"),
        sampler_checkable=sampler_checkable(request),
    )


def _under_grammar(token_id: int, logprob: float, top: dict[int, float], reported: Optional[float], allowed: Allowed) -> TokenEvidence:
    """One position's evidence read over the tokens the grammar allows there: the top-K it forbids dropped, the
    rank counted among the allowed, and the range of the renormalizing −log Z the engine's reported logprob carries:
    Z, the allowed tokens' raw mass, is at least the known allowed ones' and at most that plus the unseen tail's."""
    kept = {tid: lp for tid, lp in top.items() if tid in allowed}
    known_mass = sum(math.exp(lp) for lp in {**top, token_id: logprob}.values())
    log_allowed = _log_sum_exp([*kept.values(), logprob] if token_id not in kept else list(kept.values()))
    tail = max(0.0, 1.0 - known_mass)
    offset = (-math.log(max(1e-300, min(1.0, math.exp(log_allowed) + tail))), -log_allowed)
    rank = 1 + sum(lp > logprob for tid, lp in kept.items() if tid != token_id)
    return TokenEvidence(token_id, logprob, rank, kept, reported, offset)


def _log_sum_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def judge(evidence: ResponseEvidence, params: FidelityParams = FidelityParams(), tolerance: Tolerance = TOLERANCES["float32"]) -> Verdict:
    """The verdict on what an honest miner cannot do, with (``Verdict.stats``) the answer's evidence for
    the per-miner test, counted with the declared dtype's ``tolerance``."""
    return replace(check(evidence, params), stats=answer_stats(evidence, tolerance))


async def verify(
    reference: ReferenceEngine,
    request: dict[str, Any],
    response: AnswerRecord,
    params: FidelityParams = FidelityParams(),
    tolerance: Tolerance = TOLERANCES["float32"],
) -> Verdict:
    """``gather`` then ``judge`` (off the event loop). ReferenceFailed when the reference itself fails."""
    gathered = await gather(reference, request, response)
    if isinstance(gathered, Verdict):
        return gathered
    return await asyncio.to_thread(judge, gathered, params, tolerance)
