"""Teacher-forced verification on the real vLLM engine: honest answers pass, substituted ones fail."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from models import subnet as model_list
from models.tiny import build_tiny
from models.tokenizer import ModelTokenizer
from protocol.records import AnswerRecord
from protocol.streams import sse_events
from scoring.evidence import TOLERANCES, log_likelihood_ratio
from validator.challenges import UserPrompts, generate
from validator.verify import ReferenceEngine, collect, verify

pytestmark = pytest.mark.slow
MODEL = "slmnet/tiny-qwen2-s0"
ENDS = model_list.load().get(MODEL).end_token_ids


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_engine):
    tmp = tmp_path_factory.mktemp("verify")
    build_tiny(tmp / "s0", seed=0)
    build_tiny(tmp / "s1", seed=1)  # the same architecture and tokenizer, other weights
    return tiny_engine.url, tmp, ModelTokenizer(tmp / "s0")


async def _stream(session: aiohttp.ClientSession, url: str, body: dict) -> AnswerRecord:
    """An honest miner: the declared model's own engine, streamed."""
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        return collect([event async for event in sse_events(response)])


def _substitute(model_dir, messages: list[dict], max_tokens: int) -> AnswerRecord:
    """A miner that answers with another model (greedy) and reports that model's logprobs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    ids, logprobs = prompt, []
    with torch.no_grad():
        for _ in range(max_tokens):
            step = torch.log_softmax(model(ids).logits[0, -1], -1)
            token = int(step.argmax())
            logprobs.append(float(step[token]))
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
    completion = ids[0, prompt.shape[1] :].tolist()
    return AnswerRecord(
        prompt_token_ids=prompt[0].tolist(),
        token_ids=completion,
        logprobs=logprobs,
        text=tokenizer.decode(completion, skip_special_tokens=True),
        finish_reason="length",
        completion_tokens=len(completion),
    )


def _keep(response: AnswerRecord, vocabulary: ModelTokenizer, kept: list[int], **changes) -> AnswerRecord:
    """``response`` with only the tokens at positions ``kept``, its text their detokenization: a consistent forgery."""
    ids = [response.token_ids[i] for i in kept]
    return response.model_copy(
        update={
            "token_ids": ids,
            "logprobs": [response.reported()[i] for i in kept],
            "text": vocabulary.decode(ids),
            "completion_tokens": len(ids),
            **changes,
        }
    )


async def test_honest_answers_to_a_round_of_challenges_all_pass(reference):
    url, _, vocabulary = reference
    finishes = []
    async with aiohttp.ClientSession() as session:
        engine = ReferenceEngine(session, url, MODEL, vocabulary, ENDS)
        challenges = generate(seed=2026, count=24)
        bodies = [challenge.request(MODEL) for challenge in challenges]
        answers = await asyncio.gather(*(_stream(session, url, body) for body in bodies))  # as a round sends them: at once
        for challenge, body, answer in zip(challenges, bodies, answers):
            verdict = await verify(engine, body, answer)
            assert verdict.passed, (challenge.family, body["temperature"], body["top_p"], verdict.reasons)
            assert verdict.max_abs_dlp is not None and verdict.max_abs_dlp < 1e-3  # same engine: equal to float noise
            finishes.append(answer.finish_reason)
            if answer.finish_reason == "stop":
                assert answer.token_ids[-1] in ENDS  # the engine returns the end token: what the end checks rely on


async def test_honest_answers_to_challenges_shaped_like_users_with_stop_strings_and_penalties_pass(reference):
    """Challenges copy what users send, stop strings and penalties included: the honest engine's answers pass
    (an answer a stop string ended is no cut answer; the checks the penalties leave still hold). The same answer
    cut a token sooner, still 'stop', is: its ids no longer spell the stop string after its text."""
    url, _, vocabulary = reference
    shapes = [
        {"temperature": 0.7, "stop": ["e", " the"], "max_tokens": 40},
        {"temperature": 0.0, "stop": "a", "presence_penalty": 0.5, "repetition_penalty": 1.1},
        {"temperature": 1.0, "top_k": 40, "frequency_penalty": 0.3, "max_tokens": 24},
    ]
    async with aiohttp.ClientSession() as session:
        engine = ReferenceEngine(session, url, MODEL, vocabulary, ENDS)
        challenges = generate(seed=2027, count=18, users=UserPrompts(shapes=shapes))
        bodies = [challenge.request(MODEL) for challenge in challenges]
        answers = await asyncio.gather(*(_stream(session, url, body) for body in bodies))
        stopped_by_string = 0
        for body, answer in zip(bodies, answers):
            verdict = await verify(engine, body, answer)
            assert verdict.passed, (body.get("stop"), body.get("temperature"), verdict.reasons)
            if answer.finish_reason == "stop" and answer.token_ids[-1] not in ENDS:
                stopped_by_string += 1
                cut = await verify(engine, body, _keep(answer, vocabulary, list(range(len(answer.token_ids) - 1))))
                assert not cut.passed and "cut short" in " ".join(cut.reasons), cut.reasons
    assert stopped_by_string >= 1  # a stop string did end answers: the case the end checks must let pass


async def test_running_past_the_end_or_cutting_before_it_fails(reference):
    """Greedy challenges where the model ends early: a miner that goes on (ignore_eos, the end
    token dropped) or stops sooner without the end token is caught."""
    url, _, vocabulary = reference
    caught = 0
    async with aiohttp.ClientSession() as session:
        engine = ReferenceEngine(session, url, MODEL, vocabulary, ENDS)
        bodies = [{**challenge.request(MODEL), "temperature": 0.0} for challenge in generate(seed=5, count=160)]
        answers = await asyncio.gather(*(_stream(session, url, body) for body in bodies))  # the engine batches them: seconds, not a minute
        for body, honest in zip(bodies, answers):
            if caught == 2:
                break
            if honest.finish_reason != "stop" or len(honest.token_ids) < 3:
                continue
            assert (await verify(engine, body, honest)).passed
            went_on = await _stream(session, url, {**body, "ignore_eos": True})
            kept = [i for i, t in enumerate(went_on.token_ids) if t not in ENDS]
            past = _keep(went_on, vocabulary, kept)
            past_verdict = await verify(engine, body, past)
            cut = _keep(honest, vocabulary, list(range(len(honest.token_ids) - 2)))
            cut_verdict = await verify(engine, body, cut)
            assert not past_verdict.passed, past_verdict
            assert not cut_verdict.passed and "cut short" in " ".join(cut_verdict.reasons)
            caught += 1
    assert caught == 2  # the tiny model ends early on a few greedy prompts in a hundred (seeded: the same ones every run)


def _ended_early(honest: AnswerRecord, vocabulary: ModelTokenizer, keep: int, end_logprob: float) -> AnswerRecord:
    """``honest`` cut to its first ``keep`` tokens, then the model's end token with the logprob
    the model gives it there: an answer that reads as one that ended naturally."""
    cut = _keep(honest, vocabulary, list(range(keep)), finish_reason="stop")
    return cut.model_copy(update={"token_ids": [*cut.token_ids, ENDS[0]], "logprobs": [*cut.reported(), end_logprob], "completion_tokens": keep + 1})


async def test_an_end_token_a_miner_appends_where_the_model_goes_on_is_caught(reference):
    """The last id of an answer that stopped on an end token spells no text (vLLM never shows
    it). A miner that knows it cuts answers short and appends an end token, reporting the
    logprob its own engine gives the end there: the binding lets the end's text go, and the
    end itself is judged as a choice — greedy, a token the model would not produce; sampled,
    not the reference's Gumbel-max winner: evidence against the miner."""
    url, _, vocabulary = reference
    async with aiohttp.ClientSession() as session:
        engine = ReferenceEngine(session, url, MODEL, vocabulary, ENDS)
        sampled = [body for body in (c.request(MODEL) for c in generate(seed=9, count=40)) if body["temperature"] >= 0.5][:6]
        bodies = [{**sampled[0], "temperature": 0.0}, *sampled]
        answers = await asyncio.gather(*(_stream(session, url, body) for body in bodies))
        verdicts = []
        for body, honest in zip(bodies, answers):
            if honest.finish_reason != "length" or len(honest.token_ids) < 16:
                continue
            keep = len(honest.token_ids) // 2
            scored = await engine.score(honest.prompt_token_ids, [*honest.token_ids[:keep], ENDS[0]])
            verdicts.append(
                (
                    body["temperature"],
                    await verify(engine, body, honest),
                    await verify(engine, body, _ended_early(honest, vocabulary, keep, scored[-1][ENDS[0]][0])),
                )
            )
    greedy, *rest = verdicts
    assert greedy[0] == 0 and len(rest) >= 2, [v[0] for v in verdicts]
    for _, honest_verdict, _ in verdicts:
        assert honest_verdict.passed and honest_verdict.stats.mismatches == 0
    for _, _, ended in verdicts:
        assert not any("spell" in reason for reason in ended.reasons), ended.reasons  # the end's text is not asked for
        assert ended.stats.mismatches >= 1 and log_likelihood_ratio(ended.stats, TOLERANCES["float32"]) > 0
    assert not greedy[2].passed and "would not produce at temperature 0" in " ".join(greedy[2].reasons)


async def test_another_model_behind_the_declared_name_fails(reference):
    url, tmp, vocabulary = reference
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Reverse the string 'harbor'."}], "max_tokens": 24, "temperature": 0, "logprobs": True}
    substituted = _substitute(tmp / "s1", body["messages"], 24)
    async with aiohttp.ClientSession() as session:
        verdict = await verify(ReferenceEngine(session, url, MODEL, vocabulary, ENDS), body, substituted)
    assert not verdict.passed
    assert verdict.implausible_tokens > 0 and any("nats from the reference" in r for r in verdict.reasons)


async def test_invented_logprobs_cut_answers_lied_counts_and_foreign_prompts_fail(reference):
    url, _, vocabulary = reference
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Sort 5, 2, 9."}],
        "max_tokens": 20,
        "temperature": 0.7,
        "seed": 1,
        "logprobs": True,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    async with aiohttp.ClientSession() as session:
        engine = ReferenceEngine(session, url, MODEL, vocabulary, ENDS)
        honest = await _stream(session, url, body)
        assert (await verify(engine, body, honest)).passed

        invented = honest.model_copy(update={"logprobs": [-0.05] * len(honest.token_ids)})
        cut = _keep(honest, vocabulary, list(range(len(honest.token_ids) - 4)))
        inflated = honest.model_copy(update={"completion_tokens": 40})
        foreign = honest.model_copy(update={"prompt_token_ids": honest.prompt_token_ids[1:]})
        verdicts = {name: await verify(engine, body, r) for name, r in [("cut", cut), ("inflated", inflated), ("foreign", foreign)]}
        # Evidence for the per-miner test rather than a failure on its own: logprobs a little off.
        invented_stats = (await verify(engine, body, invented)).stats
    assert invented_stats.reported > 0 and invented_stats.exceedances >= 0.9 * invented_stats.reported
    assert log_likelihood_ratio(invented_stats, TOLERANCES["float32"]) > 0
    assert "cut short" in " ".join(verdicts["cut"].reasons)
    assert "usage reports 40" in " ".join(verdicts["inflated"].reasons)
    assert "prompt tokens differ" in " ".join(verdicts["foreign"].reasons)
    assert not any(v.passed for v in verdicts.values())


async def test_seeded_choices_are_the_references_gumbel_max_and_a_miner_with_its_own_randomness_is_not(reference):
    """The engine samples seeded requests through the verifiable sampler: the validator recomputes
    every choice. A miner that samples with its own RNG (the request's seed dropped) mismatches."""
    url, _, vocabulary = reference
    async with aiohttp.ClientSession() as session:
        engine = ReferenceEngine(session, url, MODEL, vocabulary, ENDS)
        bodies = [body for body in (challenge.request(MODEL) for challenge in generate(seed=77, count=30)) if body["temperature"]]
        # All at once, as a round sends them: the engine batches them.
        honest = await asyncio.gather(*(_stream(session, url, body) for body in bodies))
        own = await asyncio.gather(*(_stream(session, url, {k: v for k, v in body.items() if k != "seed"}) for body in bodies))
        verdicts = await asyncio.gather(*(verify(engine, body, answer) for body, answer in zip(bodies + bodies, honest + own)))
        assert all(verdict.passed for verdict in verdicts)  # each answer alone is a plausible sample
        honest_stats, own_stats = [v.stats for v in verdicts[: len(bodies)]], [v.stats for v in verdicts[len(bodies) :]]
    assert sum(s.tokens for s in honest_stats) > 300 and sum(s.mismatches for s in honest_stats) == 0
    assert sum(s.mismatches for s in own_stats) > 0.2 * sum(s.tokens for s in own_stats)


async def test_text_is_bound_to_the_ids_and_ids_to_the_vocabulary(reference):
    """What a user reads and the grader grades is what the verifier checked; ids the model has not got
    fail on the miner, without the reference engine being asked (it would refuse them)."""
    url, _, vocabulary = reference
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is 2 + 2?"}],
        "max_tokens": 12,
        "temperature": 0.7,
        "seed": 3,
        "logprobs": True,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
        "stream": True,
        "ignore_eos": True,
    }
    async with aiohttp.ClientSession() as session:
        honest = await _stream(session, url, body)
        engine = ReferenceEngine(session, url, MODEL, vocabulary, ENDS)
        relabelled = honest.model_copy(update={"text": "The answer is 4."})
        outside = honest.model_copy(update={"token_ids": [*honest.token_ids[:-1], vocabulary.size + 7]})
        short_context = ReferenceEngine(session, url, MODEL, vocabulary, ENDS, max_context=len(honest.prompt_token_ids) + 4)
        assert (await verify(engine, body, honest)).passed
        verdicts = [await verify(engine, body, relabelled), await verify(engine, body, outside), await verify(short_context, body, honest)]
    assert "not what the token ids spell" in verdicts[0].reasons[0]
    assert "outside the model's vocabulary" in verdicts[1].reasons[0]
    assert "exceed the model's context" in verdicts[2].reasons[0]
