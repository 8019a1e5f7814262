"""What a miner did for users, from the gateway's ledger to the validator's score (issue 25)."""

from __future__ import annotations

from gateway.store import Store as GatewayStore
from protocol.records import ServiceReport, ServiceReports
from validator.organic import service_since
from validator.rounds import service_factor


def test_the_gateway_counts_each_miners_service_from_its_ledger_and_its_refusals(tmp_path):
    store = GatewayStore(tmp_path / "gateway.sqlite")
    key_id = store.create_key("user")[1].id
    for n, parts in enumerate(([(1, "5Good", 12)], [(1, "5Good", 4), (2, "5Flaky", 8)], [(2, "5Flaky", 0)])):
        store.open_request(f"r{n}", key_id, "m", 5)
        store.close_request(f"r{n}", "ok", sum(p[2] for p in parts), len(parts) - 1, parts)
    store.count_service("5Refuser", "refused")
    store.count_service("5Refuser", "refused")
    store.count_service("5Flaky", "failed")
    assert store.service_reports() == [
        ServiceReport(hotkey="5Flaky", served=1, tokens=8, refused=0, failed=1),  # a part with no token served nothing
        ServiceReport(hotkey="5Good", served=2, tokens=16, refused=0, failed=0),
        ServiceReport(hotkey="5Refuser", served=0, tokens=0, refused=2, failed=0),
    ]


def test_the_validator_takes_what_happened_since_the_last_round_and_a_refuser_earns_what_it_serves():
    first = ServiceReports(
        miners=[
            ServiceReport(hotkey="5Good", served=10, tokens=100, refused=0, failed=0),
            ServiceReport(hotkey="5Ref", served=0, tokens=0, refused=4, failed=0),
        ]
    )
    since, seen = service_since(first, {})
    assert since == {"5Good": (10, 0, 0), "5Ref": (0, 4, 0)}
    later = ServiceReports(
        miners=[
            ServiceReport(hotkey="5Good", served=13, tokens=130, refused=0, failed=1),
            ServiceReport(hotkey="5Ref", served=0, tokens=0, refused=4, failed=0),
        ]
    )
    since, seen = service_since(later, seen)
    assert since == {"5Good": (3, 0, 1)} and seen["5Good"] == (13, 0, 1)  # nothing new for 5Ref: nothing held for or against it
    restarted = ServiceReports(miners=[ServiceReport(hotkey="5Good", served=2, tokens=20, refused=0, failed=0)])
    assert service_since(restarted, seen)[0] == {"5Good": (2, 0, 0)}  # a new ledger counts from zero
    assert service_factor((0, 4, 0)) == 0.0 and service_factor((3, 0, 1)) == 0.75 and service_factor(None) == 1.0 == service_factor((0, 0, 0))
