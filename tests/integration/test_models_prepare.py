"""`slmnet models prepare smollm2-135m`: the packaged GGUF becomes a model that answers real questions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurons.cli", "models", "prepare", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_smollm2_is_prepared_once_and_answers_a_question():
    cache = Path(os.environ["SLMNET_CACHE"])  # the session's: `slmnet up`'s test may have prepared it already
    done = _prepare("smollm2-135m", "--cache-dir", str(cache), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    prepared = json.loads(done.stdout)
    assert prepared["id"] == "slmnet/SmolLM2-135M-Instruct-Q4_1" and prepared["max_context"] == 8192
    folder = cache / "models" / "smollm2-135m"
    assert json.loads((folder / "slmnet.json").read_text())["weights_sha256"] == prepared["weights_sha256"]
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())  # plain fp32, not GGUF

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

    again = _prepare("smollm2-135m", "--cache-dir", str(cache), "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == prepared


def test_an_unknown_model_name_is_refused_with_the_known_ones(tmp_path):
    done = _prepare("gpt-5", "--cache-dir", str(tmp_path))
    assert done.returncode == 1
    assert "unknown model 'gpt-5'; known: gemma3-270m, smollm2-135m" in done.stderr
