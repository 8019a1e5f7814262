"""Task families: prompts whose answers can be checked, built from a seeded RNG.

Every parameter comes from the ``random.Random`` passed in, so a task cannot be
memorized (the space is large) and anyone with the seed can rebuild it. Each family
returns the conversation and an ``Answer`` that ``grade`` compares the reply with.
"""

from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass
from typing import Callable, Literal, Optional

WORDS = (
    "lighthouse harbor meadow lantern orchard compass glacier violin pebble canyon ribbon thunder marble "
    "falcon velvet cobalt saddle prairie beacon quartz willow ember lagoon summit cricket anchor mosaic"
).split()
NAMES = "Ada Bram Chiara Dmitri Esme Farid Greta Hiro Ines Jonas Kaia Luca Mireille Nikhil Oona Pavel".split()
TOPICS = (
    "the sea at night|a city waking up|an old library|learning to ride a bicycle|a storm over the mountains|a robot that gardens|the first day of spring".split(
        "|"
    )
)


@dataclass(frozen=True)
class Answer:
    kind: Literal["number", "text", "numbers", "json"]
    value: object  # int | str | list[int] | dict


@dataclass(frozen=True)
class Task:
    family: str
    messages: tuple[dict, ...]
    answer: Optional[Answer]  # None: an open prompt, nothing to check


def arithmetic(rng: random.Random) -> Task:
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    op = rng.choice("+-*")
    if op == "*":
        b = rng.randint(2, 20)
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    phrasing = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b} and give the result."])
    return Task("arithmetic", ({"role": "user", "content": phrasing.format(a=a, op=op, b=b) + " Answer with the number only."},), Answer("number", value))


def reverse_string(rng: random.Random) -> Task:
    word = rng.choice(WORDS) if rng.random() < 0.2 else _random_word(rng, 4, 10)
    prompt = f"Reverse the string '{word}'. Reply with the reversed string only."
    return Task("reverse_string", ({"role": "user", "content": prompt},), Answer("text", word[::-1]))


def sort_numbers(rng: random.Random) -> Task:
    numbers = rng.sample(range(1, 100), rng.randint(3, 7))
    descending = rng.random() < 0.3
    order = "descending" if descending else "ascending"
    prompt = f"Sort these numbers in {order} order: {', '.join(map(str, numbers))}. Reply with the sorted numbers separated by commas."
    return Task("sort_numbers", ({"role": "user", "content": prompt},), Answer("numbers", sorted(numbers, reverse=descending)))


def _random_word(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(low, high)))


def count_letter(rng: random.Random) -> Task:
    word = rng.choice(WORDS) if rng.random() < 0.2 else _random_word(rng, 6, 14)
    letter = rng.choice(sorted(set(word)))
    prompt = f"How many times does the letter '{letter}' appear in the word '{word}'? Answer with the number only."
    return Task("count_letter", ({"role": "user", "content": prompt},), Answer("number", word.count(letter)))


def json_format(rng: random.Random) -> Task:
    name, age, city = rng.choice(NAMES), rng.randint(18, 90), rng.choice(WORDS).capitalize() + "ville"
    prompt = (
        f'Return a JSON object with the keys "name", "age" and "city" for {name}, who is {age} years old and lives in {city}. Reply with the JSON object only.'
    )
    return Task("json_format", ({"role": "user", "content": prompt},), Answer("json", {"name": name, "age": age, "city": city}))


def uppercase(rng: random.Random) -> Task:
    words = rng.sample(WORDS, rng.randint(2, 4))
    prompt = f"Write '{' '.join(words)}' in uppercase letters. Reply with the uppercase text only."
    return Task("uppercase", ({"role": "user", "content": prompt},), Answer("text", " ".join(words).upper()))


def multi_turn(rng: random.Random) -> Task:
    """A conversation whose last question depends on an earlier turn."""
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    name = rng.choice(NAMES)
    messages = (
        {"role": "user", "content": f"My name is {name} and I have {a} marbles."},
        {"role": "assistant", "content": f"Nice to meet you, {name}! {a} marbles is a fine collection."},
        {"role": "user", "content": f"A friend gives me {b} more. How many marbles do I have now? Answer with the number only."},
    )
    return Task("multi_turn", messages, Answer("number", a + b))


def open_prompt(rng: random.Random) -> Task:
    template = rng.choice(
        ["Write a short poem about {t}.", "Tell a very short story about {t}.", "Describe {t} in three sentences.", "What comes to mind when you think of {t}?"]
    )
    messages: tuple[dict, ...] = ({"role": "user", "content": template.format(t=rng.choice(TOPICS))},)
    if rng.random() < 0.3:
        messages = ({"role": "system", "content": "You are a helpful, concise assistant."}, *messages)
    return Task("open_prompt", messages, None)


FAMILIES: dict[str, Callable[[random.Random], Task]] = {
    f.__name__: f for f in (arithmetic, reverse_string, sort_numbers, count_letter, json_format, uppercase, multi_turn, open_prompt)
}


def grade(answer: Answer, reply: str) -> float:
    """1.0 when ``reply`` carries the expected answer, else 0.0 (lenient about surrounding text)."""
    text = reply.strip()
    if answer.kind == "number":
        found = re.findall(r"-?\d+", text.replace(",", ""))
        return float(bool(found) and int(found[0]) == answer.value)
    if answer.kind == "text":
        first_line = text.splitlines()[0].strip(" '\"`.") if text else ""
        return float(first_line == answer.value)
    if answer.kind == "numbers":
        return float([int(n) for n in re.findall(r"-?\d+", text)] == answer.value)
    if answer.kind == "json":
        match = re.search(r"\{.*\}", text, re.DOTALL)
        try:
            parsed = json.loads(match.group(0)) if match else None
        except ValueError:
            return 0.0
        return float(parsed == answer.value)
    raise ValueError(f"unknown answer kind {answer.kind}")
