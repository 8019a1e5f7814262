"""The tiny test model: deterministic to the byte, and served by the real vLLM engine."""

from __future__ import annotations

import json
import urllib.request

import pytest

from models.manifest import ModelManifest
from models.tiny import build_tiny


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    first = build_tiny(tmp_path / "a", seed=3)
    again = build_tiny(tmp_path / "b", seed=3)
    other = build_tiny(tmp_path / "c", seed=4)
    assert first == again != other
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    manifest = ModelManifest.read(tmp_path / "a")
    assert (manifest.id, manifest.weights_sha256) == ("slmnet/tiny-qwen2-s3", first)


def test_tokenizer_round_trips_and_applies_the_chat_template(tmp_path):
    from transformers import AutoTokenizer

    build_tiny(tmp_path / "m", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")
    text = "What is 17 + 25? Reverse the string 'slmnet'."
    assert tokenizer.decode(tokenizer.encode(text)) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_vllm_serves_the_tiny_model_deterministically(tiny_engine):
    server = tiny_engine
    body = {
        "model": "slmnet/tiny-qwen2-s0",
        "messages": [{"role": "user", "content": "What is 2 + 2?"}],
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
        "ignore_eos": True,
    }
    first = _post(f"{server.url}/v1/chat/completions", body)
    second = _post(f"{server.url}/v1/chat/completions", body)
    tokens = first["choices"][0]["logprobs"]["content"]
    assert len(tokens) == 8 and first["usage"]["completion_tokens"] == 8
    assert all(t["logprob"] <= 0 for t in tokens)
    assert [t["logprob"] for t in tokens] == [t["logprob"] for t in second["choices"][0]["logprobs"]["content"]]
