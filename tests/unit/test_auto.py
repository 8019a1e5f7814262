"""``model: "auto"``: requests classified by kind, and each flavour's pick from the validators'
graded answers and the gateway's latency."""

from __future__ import annotations

import random

from gateway.auto import FLAVOURS, GRADED, AutoRouter, classify
from gateway.router import MinerView, Router
from protocol.records import FamilyScore, MinerVerdict
from validator.challenges.tasks import FAMILIES


def _verdict(hotkey: str, model: str, **families: tuple[int, int]) -> MinerVerdict:
    quality = [FamilyScore(family=f, answers=a, correct=c) for f, (a, c) in families.items()]
    return MinerVerdict(uid=0, hotkey=hotkey, model=model, standing="ok", answers=10, evidence=0.0, quality=quality)


def test_the_validators_task_families_are_told_apart_from_the_request_alone():
    rng = random.Random(11)  # fixed: the same 50 tasks a family every run
    wrong = {}
    for family, build in FAMILIES.items():
        kinds = [classify({"messages": list(build(rng).messages)}) for _ in range(50)]
        wrong[family] = sum(kind != family for kind in kinds)
    # every checkable family (what auto's accuracy figures are about) is recognised every time
    assert {f: n for f, n in wrong.items() if f in GRADED and n} == {}
    # open kinds share one accuracy figure; most still land in their own kind
    assert sum(wrong[f] for f in FAMILIES if f not in GRADED) < 0.25 * 50 * (len(FAMILIES) - len(GRADED)), wrong
    assert classify({"prompt": "What is 7 * 6?"}) == "arithmetic"


def test_best_takes_the_most_accurate_fast_the_quickest_and_auto_the_quickest_within_two_points():
    auto = AutoRouter({"big": 10.0, "small": 100.0})
    # big: 90 of 100 right on arithmetic; small: 89 of 100 (within 2 points), and far faster
    big = [_verdict("a", "big", arithmetic=(60, 54)), _verdict("b", "big", arithmetic=(40, 36))]  # learn takes every verdict in force each time
    auto.learn([*big, _verdict("c", "small", arithmetic=(100, 89))])
    assert auto.model("big").graded == {"arithmetic": (100, 90)}  # summed over the model's miners
    picks = {flavour: auto.choose(flavour, "arithmetic", {"big": 0.0, "small": 0.0}, 64).model for flavour in FLAVOURS}
    assert picks == {"auto:best": "big", "auto:fast": "small", "auto": "small"}
    # 85 of 100: 5 points below: balanced keeps the accurate one, fast still takes the quick one
    auto.learn([*big, _verdict("c", "small", arithmetic=(100, 85))])
    assert auto.choose("auto", "arithmetic", {"big": 0.0, "small": 0.0}, 64).model == "big"
    assert auto.choose("auto:fast", "arithmetic", {"big": 0.0, "small": 0.0}, 64).model == "small"
    # 10 of 100: fast as it is, it answers anything: no flavour takes it
    auto.learn([*big, _verdict("c", "small", arithmetic=(100, 10))])
    assert {auto.choose(flavour, "arithmetic", {"big": 0.0, "small": 0.0}, 64).model for flavour in FLAVOURS} == {"big"}


def test_an_ungraded_kind_uses_the_pooled_accuracy_and_unjudged_models_are_not_bet_on():
    auto = AutoRouter()
    served = {"m1": 0.2, "m2": 0.1, "m3": 0.7}
    # nobody judged yet: the model the validators pay most for, whatever the flavour
    assert {auto.choose(flavour, "arithmetic", served, 64).model for flavour in FLAVOURS} == {"m3"}
    auto.learn([_verdict("a", "m1", arithmetic=(10, 9), uppercase=(10, 9)), _verdict("b", "m2", arithmetic=(10, 1))])
    network = (19 + 1) / (30 + 2)  # every model's answers
    assert auto.network() == network
    assert auto.model("m1").accuracy("code", network) == (18 + 4 * network) / (20 + 4)  # its record over every family
    assert auto.model("m3").accuracy("arithmetic", network) == network  # nothing graded: the network's figure, and not a candidate
    assert auto.choose("auto:best", "open_prompt", served, 64).model == "m1"
    assert auto.choose("auto:fast", "arithmetic", served, 64).model == "m1"


def test_a_family_a_model_is_rarely_or_never_graded_on_takes_its_overall_record_not_a_coin_toss():
    """What the bench's run of 2026-12-04 met with a flat prior: SmolLM2 right on 8 of 42 graded
    answers (7 of 13 JSON), Gemma on none of 27; Gemma never graded on reversing a string."""
    auto = AutoRouter()
    verdicts = [
        _verdict(
            "a",
            "smollm2",
            arithmetic=(4, 0),
            count_letter=(4, 1),
            json_format=(13, 7),
            multi_turn=(6, 0),
            reverse_string=(5, 0),
            uppercase=(5, 0),
            sort_numbers=(5, 0),
        ),
        _verdict("b", "gemma", arithmetic=(1, 0), count_letter=(4, 0), json_format=(1, 0), multi_turn=(11, 0), sort_numbers=(7, 0), uppercase=(3, 0)),
    ]
    auto.learn(verdicts)
    served = {"smollm2": 0.5, "gemma": 0.5}
    # was gemma: (0+1)/(0+2) = 0.5 against (0+1)/(5+2) on reversing; (0+1)/(1+2) against (0+1)/(4+2) on arithmetic
    for kind in ("reverse_string", "arithmetic", "uppercase", "question"):
        assert auto.choose("auto:best", kind, served, 64).model == "smollm2", kind
    # a family where the weaker model (6 right of 37 against 8 of 42) has a real record still goes to it
    auto.learn([*verdicts, _verdict("c", "gemma", arithmetic=(10, 6))])
    assert auto.choose("auto:best", "arithmetic", served, 64).model == "gemma"


def test_latency_is_learnt_from_answers_and_measured_speeds():
    auto = AutoRouter({"chatty": 40.0, "terse": 12.0})
    auto.learn([_verdict("a", "chatty", arithmetic=(10, 5)), _verdict("b", "terse", arithmetic=(10, 5))])
    for _ in range(50):
        auto.answered("chatty", "question", 200)
        auto.answered("terse", "question", 6)
    auto.measured("chatty", [0.2, 0.3, 0.25], [40.0, 38.0])
    auto.measured("terse", [0.4], [12.0])
    # (equally accurate) 0.25 + 200/40 s against 0.4 + 6/12 s: the slower model with the shorter answers is faster for this kind
    assert auto.choose("auto:fast", "question", {"chatty": 0.0, "terse": 0.0}, 256).model == "terse"
    # a request that caps the answer at 8 tokens: 0.25 + 0.2 s against 0.4 + 0.5 s
    assert auto.choose("auto:fast", "question", {"chatty": 0.0, "terse": 0.0}, 8).model == "chatty"


def test_the_router_feeds_verdicts_and_live_figures_to_auto():
    router = Router(rng=random.Random(0), prior_speeds={"m1": 40.0, "m2": 10.0})
    router.update_from_chain([MinerView(1, "h1", "http://a", "m1", 4), MinerView(2, "h2", "http://b", "m2", 4)])
    router.apply_verdicts([("v", _verdict("h1", "m1", json_format=(20, 2))), ("v", _verdict("h2", "m2", json_format=(20, 18)))])
    router.miners[1].success(0.1, 50.0)
    router.snapshot()
    assert router.auto.model("m1").ttft_s == 0.1 and router.auto.model("m1").tokens_per_s == 50.0
    assert router.auto.choose("auto:best", classify({"messages": [{"role": "user", "content": "Give it as JSON."}]}), {"m1": 0.9, "m2": 0.1}, 64).model == "m2"
    assert router.auto.report("m2")["families"] == {"json_format": {"answers": 20, "correct": 18, "accuracy": 0.9}}
