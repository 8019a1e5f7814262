"""Task families: prompts whose answers can be checked, built from a seeded RNG.

Every parameter comes from the ``random.Random`` passed in, so anyone with the seed can
rebuild a task. Each family returns the conversation and an ``Answer`` that ``grade``
compares the reply with (None for open prompts). A miner reads this file too, so the
space is made large rather than secret: each family has many phrasings, every prompt may
be dressed with a greeting, a context line or a system prompt, and the open families
(instructions, questions, rewriting and summarising a given text, code, conversations)
build their text from parts. What no reading of this file can tell from a user is a
replayed user prompt (``validator.challenges``); the pooled evidence over users' own
answers does the rest.
"""

from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass
from typing import Callable, Literal, Optional

from protocol.families import check_families

WORDS = (
    "lighthouse harbor meadow lantern orchard compass glacier violin pebble canyon ribbon thunder marble "
    "falcon velvet cobalt saddle prairie beacon quartz willow ember lagoon summit cricket anchor mosaic"
).split()
NAMES = "Ada Bram Chiara Dmitri Esme Farid Greta Hiro Ines Jonas Kaia Luca Mireille Nikhil Oona Pavel".split()
TOPICS = (
    "the sea at night|a city waking up|an old library|learning to ride a bicycle|a storm over the mountains|a robot that gardens|"
    "the first day of spring|a train journey|a lost umbrella|moving to a new country|a quiet Sunday|a chess tournament|"
    "a bakery at dawn|the last day of school|a power cut|a garden in winter|an unexpected letter|a long hike|a street market"
).split("|")
SUBJECTS = (
    "compound interest|photosynthesis|a hash table|the water cycle|vaccines|a binary search|public key cryptography|inflation|"
    "how bread rises|a heat pump|time zones|version control|the immune system|solar panels|recursion|supply and demand|"
    "a database index|tides|jet lag|caching|electric cars|sleep|composting|a load balancer|tectonic plates"
).split("|")
AUDIENCES = ("a child", "a beginner", "a busy manager", "a high-school student", "someone who has never heard of it", "an expert", "my grandmother")
SYSTEMS = (
    "You are a helpful, concise assistant.",
    "You are a helpful assistant.",
    "You are a friendly tutor. Keep answers short.",
    "Answer as precisely as you can.",
    "You are an assistant for a small business. Be brief and clear.",
    "You are a careful assistant. Do not add information that was not asked for.",
)
GREETINGS = ("", "", "", "Hi! ", "Hello. ", "Quick question: ", "Please help: ", "Hey, ", "Can you help me? ", "I need this for work. ")
CLOSINGS = ("", "", "", " Thanks!", " Thank you.", " Please be brief.", " Keep it short.")


@dataclass(frozen=True)
class Answer:
    kind: Literal["number", "text", "numbers", "json"]
    value: object  # int | str | list[int] | dict


@dataclass(frozen=True)
class Task:
    family: str
    messages: tuple[dict, ...]
    answer: Optional[Answer]  # None: an open prompt, nothing to check
    response_format: Optional[dict] = None  # structured output, as users ask for it (``protocol.structured``)


def _dress(rng: random.Random, prompt: str, system_share: float = 0.3) -> tuple[dict, ...]:
    """A prompt as users send it: maybe a greeting or a closing, maybe under a system prompt."""
    messages: tuple[dict, ...] = ({"role": "user", "content": rng.choice(GREETINGS) + prompt + rng.choice(CLOSINGS)},)
    if rng.random() < system_share:
        messages = ({"role": "system", "content": rng.choice(SYSTEMS)}, *messages)
    return messages


def _only(rng: random.Random, what: str) -> str:
    return rng.choice([f"Answer with the {what} only.", f"Reply with just the {what}.", f"Only give the {what}.", f"Give the {what} and nothing else."])


def arithmetic(rng: random.Random) -> Task:
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    op = rng.choice("+-*")
    if op == "*":
        b = rng.randint(2, 20)
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    phrasing = rng.choice(
        [
            "What is {a} {op} {b}?",
            "Compute {a} {op} {b}.",
            "Calculate {a} {op} {b} and give the result.",
            "How much is {a} {op} {b}?",
            "{a} {op} {b} = ?",
            "Work out {a} {op} {b}.",
        ]
    )
    prompt = phrasing.format(a=a, op=op, b=b) + " " + _only(rng, "number")
    return Task("arithmetic", _dress(rng, prompt), Answer("number", value))


def reverse_string(rng: random.Random) -> Task:
    word = rng.choice(WORDS) if rng.random() < 0.2 else _random_word(rng, 4, 10)
    phrasing = rng.choice(["Reverse the string '{w}'.", "Write '{w}' backwards.", "Spell '{w}' in reverse order.", "What is '{w}' reversed?"])
    prompt = phrasing.format(w=word) + " " + _only(rng, "reversed string")
    return Task("reverse_string", _dress(rng, prompt), Answer("text", word[::-1]))


def sort_numbers(rng: random.Random) -> Task:
    numbers = rng.sample(range(1, 100), rng.randint(3, 7))
    descending = rng.random() < 0.3
    order = rng.choice(["descending", "decreasing", "largest-first"]) if descending else rng.choice(["ascending", "increasing", "smallest-first"])
    phrasing = rng.choice(["Sort these numbers in {o} order: {n}.", "Put {n} in {o} order.", "Order the list {n} ({o})."])
    prompt = phrasing.format(o=order, n=", ".join(map(str, numbers))) + " Reply with the sorted numbers separated by commas."
    return Task("sort_numbers", _dress(rng, prompt), Answer("numbers", sorted(numbers, reverse=descending)))


def _random_word(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(low, high)))


def count_letter(rng: random.Random) -> Task:
    word = rng.choice(WORDS) if rng.random() < 0.2 else _random_word(rng, 6, 14)
    letter = rng.choice(sorted(set(word)))
    phrasing = rng.choice(
        ["How many times does the letter '{l}' appear in the word '{w}'?", "Count the letter '{l}' in '{w}'.", "In '{w}', how many '{l}'s are there?"]
    )
    prompt = phrasing.format(l=letter, w=word) + " " + _only(rng, "number")
    return Task("count_letter", _dress(rng, prompt), Answer("number", word.count(letter)))


def json_format(rng: random.Random) -> Task:
    name, age, city = rng.choice(NAMES), rng.randint(18, 90), rng.choice(WORDS).capitalize() + rng.choice(["ville", "ton", " Bay", "burg", " Falls"])
    phrasing = rng.choice(
        [
            'Return a JSON object with the keys "name", "age" and "city" for {n}, who is {a} years old and lives in {c}.',
            '{n} is {a} and lives in {c}. Give me that as JSON with keys "name", "age", "city".',
            'Make a JSON record (keys "name", "age", "city") of this person: {n}, age {a}, from {c}.',
        ]
    )
    prompt = phrasing.format(n=name, a=age, c=city) + " " + _only(rng, "JSON object")
    # Users asking for JSON often ask the API for it too: the same request then decodes under a grammar.
    response_format = rng.choice((None, {"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}))
    return Task("json_format", _dress(rng, prompt), Answer("json", {"name": name, "age": age, "city": city}), response_format)


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


def uppercase(rng: random.Random) -> Task:
    words = rng.sample(WORDS, rng.randint(2, 4))
    phrasing = rng.choice(["Write '{t}' in uppercase letters.", "Convert '{t}' to capital letters.", "Make '{t}' all caps."])
    prompt = phrasing.format(t=" ".join(words)) + " " + _only(rng, "uppercase text")
    return Task("uppercase", _dress(rng, prompt), Answer("text", " ".join(words).upper()))


def multi_turn(rng: random.Random) -> Task:
    """A conversation whose last question depends on an earlier turn."""
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    name, thing = rng.choice(NAMES), rng.choice(["marbles", "apples", "books", "stamps", "coins", "plants", "shells"])
    messages = (
        {
            "role": "user",
            "content": rng.choice(["My name is {n} and I have {a} {t}.", "I'm {n}. I own {a} {t}.", "Hi, {n} here; I collect {t} and have {a}."]).format(
                n=name, a=a, t=thing
            ),
        },
        {
            "role": "assistant",
            "content": rng.choice(["Nice to meet you, {n}! {a} {t} is a fine collection.", "Hello {n}! {a} {t}, noted.", "Great, {n}: {a} {t}."]).format(
                n=name, a=a, t=thing
            ),
        },
        {"role": "user", "content": f"A friend gives me {b} more. How many {thing} do I have now? {_only(rng, 'number')}"},
    )
    return Task("multi_turn", messages, Answer("number", a + b))


def _detail(rng: random.Random) -> str:
    """A random particular that makes an open prompt one of millions: no answer to it can be
    prepared (or its prefix cached) before the round's seed is known."""
    return rng.choice(
        [
            f" Use at most {rng.randint(2, 12)} sentences.",
            f" It is for {rng.choice(NAMES)}, who is {rng.randint(6, 90)}.",
            f" Mention the number {rng.randint(2, 999)} somewhere.",
            f" Include the word '{rng.choice(WORDS)}'.",
            f" Write it in {rng.choice(['a cheerful', 'a sad', 'a formal', 'a playful', 'a calm', 'an excited'])} tone.",
            f" Start with the letter {rng.choice(string.ascii_uppercase)}.",
            "",
        ]
    )


def open_prompt(rng: random.Random) -> Task:
    template = rng.choice(
        [
            "Write a short poem about {t}.",
            "Tell a very short story about {t}.",
            "Describe {t} in three sentences.",
            "What comes to mind when you think of {t}?",
            "Write a haiku about {t}.",
            "Give me three words that capture {t}, and say why.",
            "Write the opening line of a novel about {t}.",
        ]
    )
    return Task("open_prompt", _dress(rng, template.format(t=rng.choice(TOPICS)) + _detail(rng)), None)


def question(rng: random.Random) -> Task:
    """An explanation or an opinion asked for, about a subject and for an audience."""
    template = rng.choice(
        [
            "Explain {s} to {a}.",
            "How does {s} work?",
            "What are the pros and cons of {s}?",
            "Why does {s} matter? Answer for {a}.",
            "Give two examples of {s} in everyday life.",
            "What is a common misconception about {s}?",
            "Compare {s} with {s2} in a few sentences.",
        ]
    )
    first, second = rng.sample(SUBJECTS, 2)
    return Task("question", _dress(rng, template.format(s=first, s2=second, a=rng.choice(AUDIENCES)) + _detail(rng)), None)


def _passage(rng: random.Random) -> str:
    """A few sentences of given text to rewrite or summarise."""
    sentences = []
    for _ in range(rng.randint(2, 5)):
        who, place, thing = rng.choice(NAMES), rng.choice(WORDS), rng.choice(SUBJECTS)
        sentences.append(
            rng.choice(
                [
                    f"{who} spent the morning near the {place}, reading about {thing}.",
                    f"The {place} was quiet when {who} arrived with a question about {thing}.",
                    f"Nobody expected {who} to explain {thing} so clearly at the {place} meeting.",
                    f"{who} wrote a note about {thing} and left it by the {place}.",
                    f"After lunch, {who} and a friend argued about {thing} for an hour.",
                ]
            )
        )
    return " ".join(sentences)


def rewrite(rng: random.Random) -> Task:
    """Rewriting or summarising a given text."""
    template = rng.choice(
        [
            "Summarize this in one sentence:\n\n{p}",
            "Rewrite the following text in simpler words:\n{p}",
            "Make this more formal:\n\n{p}",
            "Translate this into French:\n{p}",
            "List the people mentioned in this text:\n{p}",
            "{p}\n\nWhat is the main point of the text above?",
            "Fix any grammar mistakes in this paragraph:\n{p}",
        ]
    )
    return Task("rewrite", _dress(rng, template.format(p=_passage(rng)), system_share=0.2), None)


def code(rng: random.Random) -> Task:
    """A small programming request."""
    name = "_".join(rng.sample(WORDS, 2))
    language = rng.choice(["Python", "Python", "JavaScript", "Go", "Rust", "SQL", "Bash"])
    template = rng.choice(
        [
            "Write a {l} function named {n} that returns the {k} largest numbers of a list.",
            "Write a {l} function {n} that checks whether a string is a palindrome.",
            "In {l}, how do I read a file line by line?",
            "Write {l} code that counts the words in a text and prints the {k} most common.",
            "Explain what this {l} name suggests a function does: {n}. Then write it.",
            "Write a {l} function {n} that merges two sorted lists.",
            "What does a {l} `for` loop over a range of {k} do? Show an example.",
        ]
    )
    return Task("code", _dress(rng, template.format(l=language, n=name, k=rng.randint(2, 9)) + _detail(rng)), None)


def conversation(rng: random.Random) -> Task:
    """An open conversation of a few turns: the last question follows up the first."""
    subject, audience = rng.choice(SUBJECTS), rng.choice(AUDIENCES)
    messages: tuple[dict[str, str], ...] = (
        {
            "role": "user",
            "content": f"I'm {rng.choice(NAMES)} ({rng.randint(6, 90)}). "
            + rng.choice(["What is {s}?", "Tell me about {s}.", "I keep hearing about {s}. What is it?"]).format(s=subject),
        },
        {"role": "assistant", "content": f"{subject.capitalize()} is a broad topic; in short, it is something people use and study every day."},
        {
            "role": "user",
            "content": rng.choice(["Can you explain it to {a}?", "Give me an example.", "Why is it useful?", "What should I read next about it?"]).format(
                a=audience
            ),
        },
    )
    if rng.random() < 0.3:
        messages = ({"role": "system", "content": rng.choice(SYSTEMS)}, *messages)
    return Task("conversation", messages, None)


FAMILIES: dict[str, Callable[[random.Random], Task]] = {
    f.__name__: f
    for f in (arithmetic, reverse_string, sort_numbers, count_letter, json_format, uppercase, multi_turn, open_prompt, question, rewrite, code, conversation)
}
check_families(FAMILIES, "validator.challenges.tasks.FAMILIES")


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
