"""What a miner did for users, from the gateway's ledger to the validator's score (issue 25)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store import Store as GatewayStore
from protocol.records import ServiceCounts, ServiceReport, ServiceReports
from scoring.aggregate import Outcome
from scoring.latency import StreamTiming, measure
from validator.organic import read_service, service_picture, service_since
from validator.records import Result, RoundInputs, Target
from validator.round_score import score_round, service_factor


def test_the_gateway_counts_each_miners_service_from_its_ledger_and_its_refusals(tmp_path):
    store = GatewayStore(tmp_path / "gateway.sqlite")
    key_id = store.create_key("user")[1].id
    for n, parts in enumerate(([(1, "5Good", 12)], [(1, "5Good", 4), (2, "5Flaky", 8)], [(2, "5Flaky", 0)])):
        store.open_request(f"r{n}", key_id, "m", 5)
        store.close_request(f"r{n}", "ok", sum(p[2] for p in parts), len(parts) - 1, parts)
    store.count_service("5Refuser", "refused")
    store.count_service("5Refuser", "refused")
    store.count_service("5Flaky", "failed")
    store.count_health({"5Good": True, "5Dark": False})
    store.count_health({"5Good": True, "5Dark": False, "5Refuser": True})
    assert store.service_reports() == [
        ServiceReport(hotkey="5Dark", checked=2, unreachable=2),  # failed every check: never routed a user
        ServiceReport(hotkey="5Flaky", served=1, tokens=8, refused=0, failed=1),  # a part with no token served nothing
        ServiceReport(hotkey="5Good", served=2, tokens=16, refused=0, failed=0, checked=2),
        ServiceReport(hotkey="5Refuser", served=0, tokens=0, refused=2, failed=0, checked=1),
    ]


def test_the_validator_takes_what_happened_since_the_last_round_and_a_refuser_earns_what_it_serves():
    first = ServiceReports(
        miners=[
            ServiceReport(hotkey="5Good", served=10, tokens=100, refused=0, failed=0),
            ServiceReport(hotkey="5Ref", served=0, tokens=0, refused=4, failed=0),
        ]
    )
    since, seen = service_since(first, {})
    assert since == {"5Good": ServiceCounts(served=10), "5Ref": ServiceCounts(refused=4)}
    later = ServiceReports(
        miners=[
            ServiceReport(hotkey="5Good", served=13, tokens=130, refused=0, failed=1),
            ServiceReport(hotkey="5Ref", served=0, tokens=0, refused=4, failed=0),
        ]
    )
    since, seen = service_since(later, seen)
    assert since == {"5Good": ServiceCounts(served=3, failed=1)} and seen["5Good"] == ServiceCounts(served=13, failed=1)  # nothing new for 5Ref
    restarted = ServiceReports(miners=[ServiceReport(hotkey="5Good", served=2, tokens=20, refused=0, failed=0)])
    assert service_since(restarted, seen)[0] == {"5Good": ServiceCounts(served=2)}  # a new ledger counts from zero
    assert service_factor(ServiceCounts(refused=4)) == 0.0 and service_factor(ServiceCounts(served=3, failed=1)) == 0.75
    assert service_factor(None) == 1.0 == service_factor(ServiceCounts())  # nothing seen: nothing held for or against it


def test_a_miner_users_cannot_reach_earns_nothing_and_every_gateway_counts():
    # Dark: it fails every health check a gateway sends (503, a dropped connection, reachable from a validator's address only),
    # so it is never routed a user and refuses none; the checks are what users could get of it.
    assert service_factor(ServiceCounts(checked=12, unreachable=12)) == 0.0
    assert service_factor(ServiceCounts(served=6, checked=12, unreachable=3)) == 0.75  # down a quarter of the time
    assert service_factor(ServiceCounts(served=6, refused=2, checked=10)) == 0.75

    class Gateway:
        def __init__(self, source: str, reports: list[ServiceReport] | None):
            self.source, self.reports = source, reports

        async def service(self) -> ServiceReports | None:
            return None if self.reports is None else ServiceReports(miners=self.reports)

    seen = {"http://a": {"5Dark": ServiceCounts(checked=4, unreachable=4)}, "http://down": {"5Good": ServiceCounts(served=9)}}
    gateways = [
        Gateway("http://a", [ServiceReport(hotkey="5Dark", checked=10, unreachable=10), ServiceReport(hotkey="5Good", served=3, checked=6)]),
        Gateway("http://b", [ServiceReport(hotkey="5Dark", checked=5, unreachable=5), ServiceReport(hotkey="5Good", served=2, refused=1, checked=5)]),
        Gateway("http://down", None),  # did not answer this round: what it sees meanwhile counts at its next read
    ]
    since, now = asyncio.run(read_service(gateways, seen))
    assert since == {"5Dark": ServiceCounts(checked=11, unreachable=11), "5Good": ServiceCounts(served=5, refused=1, checked=11)}
    assert now["http://down"] == seen["http://down"] and now["http://b"]["5Good"] == ServiceCounts(served=2, refused=1, checked=5)
    assert service_factor(since["5Dark"]) == 0.0 and service_factor(since["5Good"]) == pytest.approx(5 / 6)


def test_a_capacity_probe_finds_how_many_streams_each_miner_serves_and_only_probed_miners_are_measured():
    def stream(sent_at: float, rate: float, tokens: int = 60) -> Outcome:
        timing = StreamTiming(0.0, tuple((i + 1) / rate for i in range(tokens)), (1,) * tokens)
        return Outcome("ok", True, None, measure(timing), timing.relative(), sent_at, sent_at + tokens / rate)

    def probe(streams: int, rate: float) -> list[Result]:
        """Twice ``streams`` requests, ``streams`` at once, each at ``rate`` tokens/s."""
        return [Result(0, "", "sim", stream((j // streams) * 60 / rate, rate)) for j in range(2 * streams)]

    targets = [Target(1, "5Honest", "", "m", 4), Target(2, "5Claims16", "", "m", 16), Target(3, "5Light", "", "m", 4)]
    # The honest machine serves its 4 streams at 20 tokens/s; the over-declarer's machine is as big, probed at 8: 10 tokens/s each.
    results = {1: probe(4, 20.0), 2: probe(8, 10.0), 3: probe(2, 20.0)[:2]}
    report = score_round(RoundInputs(seed=0), targets, results, probed={1: 4, 2: 8})
    assert report.delivered == {1: pytest.approx(80.0), 2: pytest.approx(80.0)}  # the light round's miner is not measured
    assert report.serves == {1: 4, 2: 4}


def test_a_round_that_saw_nothing_new_of_a_miner_keeps_its_last_picture():
    from protocol.records import RoundSummary

    targets = [Target(1, "5Ref", "", "m", 4), Target(2, "5Dark", "", "m", 4), Target(3, "5New", "", "m", 4)]
    before = {1: ServiceCounts(refused=9, checked=2), 2: ServiceCounts(checked=2, unreachable=2)}
    previous = RoundSummary(
        round=0, block=1, seed="1", miners=3, challenges=1, targets={1: ("5Ref", "m", "float32", ""), 2: ("5Dark", "m", "float32", "")}, service=before
    )
    # Since then: the gateway stopped trying the refuser (only checks, passed); nothing at all of the dark miner.
    picture = service_picture({"5Ref": ServiceCounts(checked=2), "5New": ServiceCounts(served=3, checked=1)}, targets, previous)
    assert picture[1] == ServiceCounts(refused=9, checked=2) and service_factor(picture[1]) == 0.0  # its last served share holds
    assert picture[2] == before[2] and service_factor(picture[2]) == 0.0
    assert picture[3] == ServiceCounts(served=3, checked=1)
    taken = [Target(1, "5Other", "", "m", 4)]  # the uid went to another hotkey: nothing of the old one carries over
    assert service_picture({}, taken, previous) == {}
