"""Prometheus metrics of one miner, in a registry of its own (several miners may share a process in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class MinerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("slmnet_miner_requests", "Requests answered, by route and status", ["route", "status"], registry=r)
        self.refusals = Counter("slmnet_miner_refusals", "Requests refused, by error code", ["code"], registry=r)
        self.in_flight = Gauge("slmnet_miner_in_flight", "Requests being served now", registry=r)
        self.ttfb = Histogram(
            "slmnet_miner_time_to_first_byte_seconds",
            "From request received to the engine's first bytes sent on",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "slmnet_miner_request_seconds", "From request received to the last byte sent", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.stream_events = Counter("slmnet_miner_stream_events", "SSE events passed through (about one per generated token)", registry=r)
        self.completion_tokens = Counter("slmnet_miner_completion_tokens", "Completion tokens reported in usage by the engine", registry=r)
        self.engine_up = Gauge("slmnet_miner_engine_up", "1 when the engine answers its health probe", registry=r)
        self.engine_restarts = Gauge("slmnet_miner_engine_restarts", "Times the supervised engine was restarted", registry=r)
        self.metagraph_block = Gauge("slmnet_miner_metagraph_block", "Block of the metagraph the auth gate uses", registry=r)
