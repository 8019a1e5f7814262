"""Ask a miner one question with a signed, streamed request, the way a validator does.

    python -m examples.ask_miner --miner-url http://127.0.0.1:8091 --miner-hotkey SS58 \
        --wallet-path ./wallets --wallet-name validator --model slmnet/tiny-qwen2-s0 "What is 2 + 2?"

Prints the streamed text as it arrives, then the completion's token ids and the logprob
of each token (what a validator re-scores), then the usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aiohttp
import bittensor as bt

from protocol.streams import sse_events
from signed.client import MinerClient


async def ask(args: argparse.Namespace) -> int:
    wallet = bt.Wallet(args.wallet_name, args.wallet_hotkey, path=str(Path(args.wallet_path).expanduser()))
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": args.question}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
        "return_token_ids": True,
    }
    token_ids, logprobs, usage = [], [], None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with MinerClient(session, args.miner_url, wallet.hotkey, args.miner_hotkey).post("/v1/chat/completions", body) as response:
            if response.status != 200:
                print(f"{response.status}: {await response.text()}", file=sys.stderr)
                return 1
            async for event in sse_events(response):
                if "error" in event:
                    print(f"\nstream ended with an error: {event['error']['message']}", file=sys.stderr)
                    return 1
                usage = event.get("usage") or usage
                for choice in event["choices"]:
                    print(choice["delta"].get("content") or "", end="", flush=True)
                    token_ids += choice.get("token_ids") or []
                    logprobs += [round(t["logprob"], 3) for t in (choice.get("logprobs") or {}).get("content") or []]
    print(f"\ntoken ids: {token_ids}\nlogprobs: {logprobs}\nusage: {usage}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--miner-url", required=True)
    parser.add_argument("--miner-hotkey", required=True, help="SS58 address the request is addressed to")
    parser.add_argument("--wallet-path", default="~/.bittensor/wallets")
    parser.add_argument("--wallet-name", required=True, help="a registered hotkey with a validator permit or enough stake")
    parser.add_argument("--wallet-hotkey", default="default")
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-tokens", type=int, default=32)
    return asyncio.run(ask(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
