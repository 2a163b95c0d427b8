"""Prometheus metrics of the operator, served on `settings.metrics_port`.

Role: one registry and the handful of series a platform team alerts on: keepalive results
and lateness (a late keepalive is the leading indicator of a lost lease), Overshoot calls by
endpoint and outcome, streams by phase, and the soonest lease expiry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

API_CALLS = Counter(
    "overshoot_api_calls_total",
    "Overshoot API calls by endpoint and outcome (HTTP status, or an error class).",
    ["endpoint", "outcome"],
    registry=REGISTRY,
)
KEEPALIVES = Counter(
    "overshoot_keepalives_total",
    "Keepalive attempts by result (ok, ended, error).",
    ["result"],
    registry=REGISTRY,
)
KEEPALIVE_LATENESS = Histogram(
    "overshoot_keepalive_lateness_seconds",
    "How much later than scheduled a keepalive started (queueing behind the limiter).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
STREAMS_BY_PHASE = Gauge(
    "overshoot_streams",
    "OvershootStreams this operator manages, by phase.",
    ["phase"],
    registry=REGISTRY,
)
RECREATIONS = Counter(
    "overshoot_stream_recreations_total",
    "Remote streams recreated after they ended on their own, by end reason.",
    ["end_reason"],
    registry=REGISTRY,
)
SECONDS_TO_EXPIRY = Gauge(
    "overshoot_min_seconds_until_expiry",
    "Seconds until the soonest lease held by this operator expires.",
    registry=REGISTRY,
)
LEADER = Gauge(
    "overshoot_operator_leader",
    "1 while this replica holds the leader Lease and may act, else 0.",
    registry=REGISTRY,
)
