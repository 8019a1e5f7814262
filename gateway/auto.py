"""``model: "auto"``: each request to the model expected to serve it best, chosen per request.

A request is classified by what it asks (``classify``: a few regular expressions over its
last user message, the task families the validators grade), then each served model gets
an expected outcome for that kind of request:

- accuracy: the share of its graded answers in that family that were right, from the
  validators' verdicts (``MinerVerdict.quality``, summed over the model's miners), shrunk
  toward the model's accuracy over every family by ``PRIOR_ANSWERS`` answers, and that one
  toward the network's (every model's answers, smoothed by one right and one wrong). A family
  the model has few or no graded answers in takes its overall record, not a coin toss: with
  a flat prior a model never graded on a family (or graded less, every answer wrong) looked
  better there than one graded often and mostly wrong, and ``bench/auto_routing.py`` measured
  auto:best at 0.7 of the best single model's accuracy for it. For a kind the validators do
  not grade (open prompts, questions, code, rewriting, conversations): the overall record;
- latency: the median time to first token of its miners at this gateway plus the answer's
  expected length (the gateway's running mean of completion tokens for that model and
  kind) at the median tokens/s — the model list's reference speed until measured.

The flavours, all documented in the README:

- ``"auto:best"``: the most accurate (ties: the fastest);
- ``"auto"``: the fastest of those within ``MARGINS["auto"]`` (2 points) of the most accurate;
- ``"auto:fast"``: the fastest of those within ``MARGINS["auto:fast"]`` (10 points): speed
  first, but never a model that is fast because it answers anything (a test model).

Only models with at least ``MIN_GRADED`` graded answers are candidates: a model the
validators have not judged yet is not a coin toss to bet a user's request on (and the tiny
test model, fastest of all, would win every such bet). While no served model has that
many, "auto" takes the model the validators pay most for in total (summed incentive),
as it did before per-family figures existed.

Every figure is kept up to date when a verdict or an answer arrives (``AutoRouter.learn``,
``AutoRouter.answered``); a choice reads a few dict entries, takes no lock, no I/O and
no model call (``bench/auto_routing.py`` measures it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from models.subnet import DEFAULT_STREAM_SPEED
from protocol.families import GRADED as GRADED_FAMILIES
from protocol.families import check_families
from protocol.records import MinerVerdict

FLAVOURS = ("auto", "auto:fast", "auto:best")
MIN_GRADED = 8  # graded answers a model needs before auto routes by its figures
PRIOR_ANSWERS = 4  # how many graded answers the record one level up counts for in a family's (or a model's) figure
MARGINS = {"auto:best": 0.0, "auto": 0.02, "auto:fast": 0.10}  # expected accuracy each flavour gives up at most for speed
PRIOR_TTFT_S = 0.5  # a model's time to first token before the gateway has measured any
PRIOR_TOKENS = 64.0  # an answer's length before the gateway has seen any for the model and kind
LENGTH_ALPHA = 0.1  # weight of the newest answer in the running mean of answer lengths
SCAN_CHARS = 2000  # a request is classified on the first characters of its last user message
OPEN = "open"  # kinds nobody grades share their accuracy: the model's over all graded families

# (kind, pattern), first match wins: the validators' checkable families first, then open kinds.
KINDS = tuple(
    (kind, re.compile(pattern, re.IGNORECASE | re.DOTALL))
    for kind, pattern in (
        ("json_format", r"\bjson\b"),
        ("uppercase", r"upper ?case|capital letters|all caps|\bcapitali[sz]e"),
        ("reverse_string", r"\brevers|backwards"),
        ("count_letter", r"\bhow many\b.*\b(letter|times)\b|\bcount the letter|how many '.'s"),
        ("sort_numbers", r"^(?=.*\d\s*,\s*\d)(?=.*\b(sort|order|ascending|descending|increasing|decreasing)\b)"),
        ("arithmetic", r"\d\s*[-+*/×x]\s*\d|\b(plus|minus|times|divided by|sum of|product of)\b"),
        ("code", r"\b(python|javascript|typescript|rust|golang|bash|sql|function|code|script|regex)\b"),
        ("rewrite", r"\b(summari[sz]e|rewrite|translate|paraphrase|more formal|grammar|main point)\b"),
        ("question", r"\b(explain|how does|why|what is|what are|compare|example)\b"),
    )
)
HOW_MANY = re.compile(r"\bhow (many|much)\b", re.IGNORECASE)
GRADED = frozenset(GRADED_FAMILIES)
check_families([kind for kind, _ in KINDS], "gateway.auto.KINDS", every=False)


def _text(content: Any) -> str:
    return content if isinstance(content, str) else ""


def classify(body: Mapping[str, Any]) -> str:
    """The kind of request ``body`` is (a validator task family, or ``open_prompt``)."""
    messages = body.get("messages")
    if messages is None:
        return _kind(_text(body.get("prompt"))[:SCAN_CHARS])
    users = [m for m in messages if m.get("role") == "user"]
    last = _text(users[-1].get("content"))[:SCAN_CHARS] if users else ""
    kind = _kind(last)
    if len(users) > 1 and kind in ("question", "open_prompt", "count_letter"):
        # a follow-up: "how many do I have now?" counts on an earlier turn; anything else open is a conversation
        return "multi_turn" if HOW_MANY.search(last) and "letter" not in last.lower() else "conversation"
    return kind


def _kind(text: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(text):
            return kind
    return "open_prompt"


@dataclass
class ModelFigures:
    """What auto routing knows of one model."""

    graded: dict[str, tuple[int, int]] = field(default_factory=dict)  # family → (answers, correct), over its miners
    ttft_s: Optional[float] = None  # median over its miners, measured here
    tokens_per_s: Optional[float] = None
    prior_tokens_per_s: float = DEFAULT_STREAM_SPEED  # the model list's reference speed
    lengths: dict[str, float] = field(default_factory=dict)  # kind → running mean of completion tokens

    def accuracy(self, kind: str, network: float) -> float:
        """The expected share right for a request of ``kind``; ``network``: every model's (``AutoRouter.network``)."""
        answers, correct = self.pooled()
        overall = (correct + PRIOR_ANSWERS * network) / (answers + PRIOR_ANSWERS)
        if kind not in GRADED:
            return overall
        answers, correct = self.graded.get(kind, (0, 0))
        return (correct + PRIOR_ANSWERS * overall) / (answers + PRIOR_ANSWERS)

    def pooled(self) -> tuple[int, int]:
        return sum(a for a, _ in self.graded.values()), sum(c for _, c in self.graded.values())

    def latency(self, kind: str, max_tokens: int) -> float:
        tokens = min(self.lengths.get(kind, PRIOR_TOKENS), max_tokens)
        return (self.ttft_s if self.ttft_s is not None else PRIOR_TTFT_S) + tokens / (self.tokens_per_s or self.prior_tokens_per_s)


@dataclass(frozen=True)
class Choice:
    flavour: str
    model: str
    kind: str
    accuracy: float  # expected
    latency_s: float  # expected

    def header(self) -> str:
        """What ``x-slmnet-route`` says of the choice."""
        return f"{self.flavour}; kind={self.kind}; accuracy={self.accuracy:.3f}; latency_s={self.latency_s:.2f}"


class AutoRouter:
    """Per-model figures, learnt from verdicts and answers; ``choose`` picks for one request."""

    def __init__(self, prior_speeds: Optional[Mapping[str, float]] = None):
        self.figures: dict[str, ModelFigures] = {}
        self._network = 0.5  # nothing graded yet: one right and one wrong
        self.prior_speeds = dict(prior_speeds or {})

    def model(self, model: str) -> ModelFigures:
        figures = self.figures.get(model)
        if figures is None:
            figures = self.figures[model] = ModelFigures(prior_tokens_per_s=self.prior_speeds.get(model, DEFAULT_STREAM_SPEED))
        return figures

    def learn(self, verdicts: Iterable[MinerVerdict]) -> None:
        """Every miner's latest verdict (all of them, not only the new): the graded answers of each
        model summed over the miners whose verdict is about it."""
        graded: dict[str, dict[str, tuple[int, int]]] = {}
        for verdict in verdicts:
            families = graded.setdefault(verdict.model, {})
            for score in verdict.quality:
                answers, correct = families.get(score.family, (0, 0))
                families[score.family] = (answers + score.answers, correct + score.correct)
        for model in {*graded, *self.figures}:  # a model no verdict grades any more (they expired) keeps no grades
            self.model(model).graded = graded.get(model, {})
        totals = [figures.pooled() for figures in self.figures.values()]
        self._network = (sum(c for _, c in totals) + 1) / (sum(a for a, _ in totals) + 2)

    def measured(self, model: str, ttfts: list[float], speeds: list[float]) -> None:
        """The live figures of the model's miners at this gateway (medians kept)."""
        figures = self.model(model)
        figures.ttft_s = sorted(ttfts)[len(ttfts) // 2] if ttfts else None
        figures.tokens_per_s = sorted(speeds)[len(speeds) // 2] if speeds else None

    def answered(self, model: str, kind: str, completion_tokens: int) -> None:
        lengths = self.model(model).lengths
        old = lengths.get(kind)
        lengths[kind] = completion_tokens if old is None else LENGTH_ALPHA * completion_tokens + (1 - LENGTH_ALPHA) * old

    def network(self) -> float:
        """The share right over every model's graded answers, smoothed by one right and one wrong
        (summed when verdicts arrive, not per request)."""
        return self._network

    def choose(self, flavour: str, kind: str, served: Mapping[str, float], max_tokens: int) -> Choice:
        """The model for a request of ``kind`` among ``served`` (model → its miners' summed incentive; not empty), by ``flavour``."""
        network = self._network

        def option(model: str) -> Choice:
            figures = self.model(model)
            return Choice(flavour, model, kind, figures.accuracy(kind, network), figures.latency(kind, max_tokens))

        judged = [m for m in served if self.model(m).pooled()[0] >= MIN_GRADED]
        if not judged:
            return option(max(served, key=lambda m: (served[m], m)))
        options = [option(m) for m in judged]
        floor = max(c.accuracy for c in options) - MARGINS[flavour] - 1e-12
        return min((c for c in options if c.accuracy >= floor), key=lambda c: (c.latency_s, -c.accuracy, c.model))

    def report(self, model: str) -> dict[str, Any]:
        """The model's quality as ``/v1/models`` and ``/api/quality`` show it."""
        figures = self.model(model)
        answers, correct = figures.pooled()
        return {
            "graded_answers": answers,
            "accuracy": correct / answers if answers else None,
            "families": {family: {"answers": a, "correct": c, "accuracy": c / a if a else None} for family, (a, c) in sorted(figures.graded.items())},
        }
