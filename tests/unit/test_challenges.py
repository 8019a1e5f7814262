"""validator/challenges: replayable from the seed, varied, checkable, shaped like organic requests."""

from __future__ import annotations

import json
import re
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from protocol.openai import ChatCompletionRequest
from validator.challenges import FAMILY_WEIGHTS, generate, grade, round_seed
from validator.challenges.tasks import Answer


def test_a_round_is_replayable_from_its_seed_and_differs_across_seeds():
    seed = round_seed("0x" + "ab" * 32, "5Validator", 7)
    assert generate(seed, 50) == generate(seed, 50)
    assert generate(seed, 50) != generate(round_seed("0x" + "ab" * 32, "5Validator", 8), 50)
    assert round_seed("0x" + "ab" * 32, "5Other", 7) != seed


def test_every_family_appears_and_prompts_rarely_repeat():
    challenges = generate(1234, 2000)
    families = Counter(c.family for c in challenges)
    assert set(families) == set(FAMILY_WEIGHTS)
    assert 0.25 < families["open_prompt"] / 2000 < 0.35
    checkable = [json.dumps(c.body["messages"]) for c in challenges if c.answer is not None]
    assert len(set(checkable)) > 0.95 * len(checkable)
    assert len({c.body["temperature"] for c in challenges}) >= 4 and len({c.body["max_tokens"] for c in challenges}) > 100


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
