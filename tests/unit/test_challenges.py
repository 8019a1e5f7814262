"""validator/challenges: replayable from the seed, varied, checkable, shaped like organic requests."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.openai import ChatCompletionRequest
from validator.challenges import FAMILY_WEIGHTS, REPLAY, REPLAY_SHARE, UserPrompts, generate, grade, miner_seed, round_secret, round_seed, slots
from validator.challenges.tasks import Answer


def test_a_round_is_replayable_from_its_seed_and_no_two_miners_get_the_same_body(tmp_path):
    secret = round_secret(tmp_path / "round-secret")
    assert round_secret(tmp_path / "round-secret") == secret and (tmp_path / "round-secret").stat().st_mode & 0o077 == 0  # kept, private
    seed = round_seed("0x" + "ab" * 32, "5Validator", 7, secret)
    assert generate(seed, 50) == generate(seed, 50)
    assert generate(seed, 50) != generate(round_seed("0x" + "ab" * 32, "5Validator", 8, secret), 50)
    assert round_seed("0x" + "ab" * 32, "5Other", 7, secret) != seed
    # What a miner can compute from public values (the block hash, the hotkey, the round number) is not the seed.
    assert round_seed("0x" + "ab" * 32, "5Validator", 7, b"") != seed != round_seed("0x" + "ab" * 32, "5Validator", 7, round_secret(tmp_path / "other"))
    # Per miner: 64 hotkeys x 8 challenges, not one request body shared by two miners (a copy cannot answer for two).
    bodies = [json.dumps(c.request("m")) for hotkey in range(64) for c in generate(miner_seed(seed, f"5Miner{hotkey}"), 8)]
    assert len(set(bodies)) == len(bodies)


def test_every_family_appears_and_prompts_rarely_repeat():
    challenges = generate(1234, 3000)
    families = Counter(c.family for c in challenges)
    assert set(families) == set(FAMILY_WEIGHTS)  # no replay without user prompts
    open_share = sum(families[f] for f in ("open_prompt", "question", "rewrite", "code", "conversation")) / 3000
    assert 0.45 < open_share < 0.55
    every = [json.dumps(c.body["messages"]) for c in challenges]
    assert len(set(every)) > 0.95 * len(every)  # checkable and open alike
    assert len({c.body["temperature"] for c in challenges}) >= 4 and len({c.body["max_tokens"] for c in challenges}) > 100


def test_a_share_of_challenges_replays_users_prompts_with_their_choices_and_a_fresh_seed():
    users = UserPrompts(
        shapes=[{"temperature": 0.2, "top_p": 0.8}],
        replays=[{"messages": [{"role": "user", "content": f"user question {i}"}], "temperature": 0.9, "max_tokens": 40, "seed": 5} for i in range(10)],
    )
    challenges = generate(77, 2000, users=users)
    replayed = [c for c in challenges if c.family == REPLAY]
    assert abs(len(replayed) / 2000 - REPLAY_SHARE) < 0.05  # 0.25 ± 0.05: 5 standard deviations
    assert all(c.body["temperature"] == 0.9 and c.body["max_tokens"] == 40 and c.body["seed"] != 5 for c in replayed)
    assert all(c.body["temperature"] == 0.2 and c.body["top_p"] == 0.8 for c in challenges if c.family != REPLAY)
    # A generated challenge is the seed's whatever the users sent: the replay can rebuild it.
    plain = generate(77, 2000)
    assert all(c.body["messages"] == p.body["messages"] and c.max_tokens == p.max_tokens for c, p in zip(challenges, plain) if c.family != REPLAY)
    assert [r for _, r in slots(77, 2000)] == [c.family == REPLAY for c in challenges]


def test_challenges_copy_every_field_users_choose_so_none_tells_them_apart():
    shape = {"temperature": 0.7, "max_tokens": 700, "stop": ["\n\n"], "presence_penalty": 0.5, "top_k": 40}
    prompt = {"messages": [{"role": "user", "content": "a user's question"}], "max_tokens": 900, "stop": "END", "frequency_penalty": 0.3, "seed": 5}
    challenges = generate(5, 400, users=UserPrompts(shapes=[shape], replays=[prompt]))
    generated = [c.body for c in challenges if c.family != REPLAY]
    replayed = [c.body for c in challenges if c.family == REPLAY]
    assert generated and all({k: b.get(k) for k in shape} == shape for b in generated)  # a user's budget, stop strings, penalties
    assert replayed and all(b["max_tokens"] == 900 and b["stop"] == "END" and b["frequency_penalty"] == 0.3 and b["seed"] != 5 for b in replayed)
    huge = generate(5, 50, max_context=1024, users=UserPrompts(shapes=[{**shape, "max_tokens": 100_000}]))
    assert {c.max_tokens for c in huge} == {512}  # at most half the context (and MAX_CHALLENGE_TOKENS): the reference's work stays bounded


@given(st.integers(0, 2**63 - 1))
def test_every_challenge_is_a_valid_openai_request_with_verification_fields(seed):
    for challenge in generate(seed, 5):
        request = ChatCompletionRequest.model_validate(challenge.request("slmnet/tiny-qwen2-s0"))
        assert request.stream and request.logprobs and request.return_token_ids
        assert 1 <= request.max_tokens <= 256


def test_grading_accepts_the_answer_in_plain_words_and_rejects_a_wrong_one():
    assert grade(Answer("number", 475), "The answer is 475.") == 1.0
    assert grade(Answer("number", 1475), "1,475") == 1.0
    assert grade(Answer("number", 475), "476") == 0.0
    assert grade(Answer("text", "esuohthgil"), "'esuohthgil'") == 1.0
    assert grade(Answer("text", "esuohthgil"), "esuohthgi") == 0.0
    assert grade(Answer("numbers", [2, 5, 9]), "2, 5, 9") == 1.0
    assert grade(Answer("numbers", [2, 5, 9]), "2, 9, 5") == 0.0
    assert grade(Answer("json", {"name": "Ada", "age": 30}), 'Sure: {"name": "Ada", "age": 30}') == 1.0
    assert grade(Answer("json", {"name": "Ada", "age": 30}), '{"name": "Ada", "age": "30"}') == 0.0
    assert grade(Answer("json", {"name": "Ada"}), "{not json}") == 0.0


def test_each_generated_answer_is_right_for_its_prompt():
    for challenge in generate(99, 300):
        if challenge.answer is None:
            continue
        prompt = challenge.body["messages"][-1]["content"]
        if challenge.family == "arithmetic":
            a, op, b = re.search(r"(\d+) ([-+*]) (\d+)", prompt).groups()
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == challenge.answer.value
        elif challenge.family == "reverse_string":
            word = prompt.split("'")[1]
            assert challenge.answer.value == word[::-1]


def test_the_families_a_validator_grades_are_the_ones_protocol_names_and_a_renamed_one_fails_loudly():
    from protocol.families import GRADED, check_families

    challenges = generate(2024, 2000)
    assert {c.family for c in challenges if c.answer is not None} == set(GRADED)  # what gateways learn accuracy on
    with pytest.raises(ValueError, match="not task families \\['sort_nums'\\]"):
        check_families([*FAMILY_WEIGHTS, "sort_nums"], "a table")
