"""The tiny test model: deterministic to the byte, and served by the real vLLM engine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from miner.models.tiny import build_tiny


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    first = build_tiny(tmp_path / "a", seed=3)
    again = build_tiny(tmp_path / "b", seed=3)
    other = build_tiny(tmp_path / "c", seed=4)
    assert first == again != other
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_tokenizer_round_trips_and_applies_the_chat_template(tmp_path):
    from transformers import AutoTokenizer

    build_tiny(tmp_path / "m", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")
    text = "What is 17 + 25? Reverse the string 'slmnet'."
    assert tokenizer.decode(tokenizer.encode(text)) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_vllm_serves_the_tiny_model_deterministically(tmp_path):
    model = tmp_path / "m"
    build_tiny(model, seed=0)
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", TMPDIR=str(tmp_path), VLLM_CACHE_ROOT=str(tmp_path / "vllm"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    # `python -m`: the `vllm` console script looks up a distribution named vllm, and the CPU build is vllm-cpu.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024"]
    log = open(tmp_path / "vllm.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400
        while True:
            assert server.poll() is None, (tmp_path / "vllm.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "vLLM did not become healthy"
            time.sleep(2)
        body = {"model": str(model), "messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2, "ignore_eos": True}
        first = _post(f"http://127.0.0.1:{port}/v1/chat/completions", body)
        second = _post(f"http://127.0.0.1:{port}/v1/chat/completions", body)
        tokens = first["choices"][0]["logprobs"]["content"]
        assert len(tokens) == 8 and first["usage"]["completion_tokens"] == 8
        assert all(t["logprob"] <= 0 for t in tokens)
        assert [t["logprob"] for t in tokens] == [t["logprob"] for t in second["choices"][0]["logprobs"]["content"]]
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
