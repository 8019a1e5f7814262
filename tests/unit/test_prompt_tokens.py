"""A prompt's tokens before a miner is asked (``models.tokenizer.PromptTokens``): the bound every check may pass on
never falls below the count, and the gateway charges a key what the prompt takes, not its bound."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.store import Store
from models.prepare import model_folder
from models.tiny import build_tiny
from models.tokenizer import ModelTokenizer, PromptTokens
from tests.harness.served import served

MODEL = "slmnet/tiny-qwen2-s0"
CHAT_TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> list[ModelTokenizer]:
    """The tiny model's (byte-level BPE), SmolLM2's (the same kind), Gemma 3's (a byte-fallback BPE behind a
    normalizer that turns each space into three bytes; `make test` prepared the real ones: ``make models``), and a
    byte-level BPE behind NFKC, which spells some characters with many."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tiny = tmp_path_factory.mktemp("tiny") / "s0"
    build_tiny(tiny, seed=0)
    cache = Path(os.environ["SLMNET_CACHE"])
    nfkc = Tokenizer(models.BPE({symbol: i for i, symbol in enumerate(pre_tokenizers.ByteLevel.alphabet())}, []))
    nfkc.normalizer, nfkc.pre_tokenizer = normalizers.NFKC(), pre_tokenizers.ByteLevel(add_prefix_space=True)
    folder = tmp_path_factory.mktemp("nfkc")
    PreTrainedTokenizerFast(tokenizer_object=nfkc, chat_template=CHAT_TEMPLATE).save_pretrained(folder)
    real = [ModelTokenizer(model_folder(f"prepared:{name}", cache)) for name in ("smollm2-135m", "gemma3-270m")]
    return [ModelTokenizer(tiny), *real, ModelTokenizer(folder)]


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
@example(text="\ufdfa" * 40)  # NFKC spells this one character with 18: the bound measures the normalized form
@example(text="\u0958" * 40)  # NFC decomposes it
@example(text=" " * 200)  # Gemma's normalizer: one byte each becomes three
@example(text="🧑🏽‍🚀" * 20 + "<|im_start|><|im_end|><start_of_turn>")  # joined emoji, special tokens' text
def test_the_bound_is_never_below_the_count_of_a_text_or_a_conversation(tokenizers, text):
    for tokenizer in tokenizers:
        assert tokenizer.bounded
        for rendered in (text, tokenizer.render(messages=[{"role": "system", "content": text}, {"role": "user", "content": text}])):
            bound = tokenizer.bound(rendered)
            assert bound is not None and bound >= tokenizer.count(rendered)


def test_a_tokenizer_not_bound_by_bytes_gives_no_bound_and_its_prompts_are_counted_at_once(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"a": 0, "▁a": 1, "▁": 2, "[UNK]": 3}
    # a pre-tokenizer that adds a character of its own (SentencePiece's ▁ before the text), and a model of whole words
    for name, model, pre in (
        ("metaspace", models.BPE(vocab, [], unk_token="[UNK]"), pre_tokenizers.Metaspace()),
        ("words", models.WordLevel(vocab, unk_token="[UNK]"), None),
    ):
        inner = Tokenizer(model)
        inner.pre_tokenizer = pre
        PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="[UNK]").save_pretrained(tmp_path / name)
        tokenizer = ModelTokenizer(tmp_path / name)
        prompt = PromptTokens(tokenizer, "a a a")
        assert not tokenizer.bounded and tokenizer.bound("a a a") is None
        assert prompt.counted and prompt.tokens == tokenizer.count("a a a") > 0


def test_a_key_is_admitted_on_the_count_where_the_bound_is_over_its_limit_and_charged_the_count(tmp_path):
    """A request whose prompt's bound would pass a key's tokens a minute is admitted on its count; one that the bound
    admits is charged its count once the miner is asked (here: none can take it, and its books still close)."""
    from bittensor.sp_core import Keypair

    from gateway.router import MinerView, Router
    from gateway.server import create_app
    from gateway.settings import GatewaySettings
    from gateway.state import GatewayState

    build_tiny(tmp_path / "tiny", seed=0)
    tokenizer = ModelTokenizer(tmp_path / "tiny")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    counted = tokenizer.count(tokenizer.render(messages=messages))
    assert tokenizer.bound(tokenizer.render(messages=messages)) > counted + 10
    store = Store(tmp_path / "g.sqlite")
    tight, tight_key = store.create_key("tight", tpm=counted + 4)  # the count + max_tokens fits it exactly
    roomy, roomy_key = store.create_key("roomy", tpm=10_000)
    router = Router(explore=0.0)
    router.update_from_chain([MinerView(1, "h1", "http://127.0.0.1:9", MODEL, capacity=1, incentive=1.0)])
    router.miners[1].healthy = True  # a miner that accepts no connection: every request fails upstream (502)
    state = GatewayState(
        store=store, router=router, tokenizers={MODEL: tokenizer}, keypair=Keypair.create_from_uri("//G"), settings=GatewaySettings(max_attempts=1)
    )

    async def run() -> list[int]:
        statuses = []
        async with served(create_app(state)) as url, aiohttp.ClientSession() as session:
            for plaintext in (tight, tight, roomy):
                body = {"model": MODEL, "messages": messages, "max_tokens": 4}
                async with session.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {plaintext}"}) as response:
                    statuses.append(response.status)
            await state.ledger.synced()
            left = [(await state.limits.window_remaining(key))["tokens"] for key in (tight_key, roomy_key)]
        return statuses + left

    tight_first, tight_second, roomy_status, tight_left, roomy_left = asyncio.run(run())
    # admitted on the count (the miner then failed it: 502), then full; the roomy key charged the count, not the bound
    assert (tight_first, tight_second, roomy_status) == (502, 429, 502)
    assert (tight_left, roomy_left) == (0, 10_000 - counted - 4)
    assert store.db.execute("SELECT prompt_tokens FROM usage ORDER BY started").fetchall() == [(counted,), (counted,)]
