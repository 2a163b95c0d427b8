"""The health endpoints and the metrics they serve."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from overshoot_publisher.health import build_app
from overshoot_publisher.metrics import DELIVERING_SECONDS, FpsMeter, Metrics

pytestmark = pytest.mark.unit


async def test_readyz_needs_an_open_source_and_a_published_track() -> None:
    metrics = Metrics()
    async with TestClient(TestServer(build_app(metrics))) as client:
        assert (await client.get("/healthz")).status == 200
        response = await client.get("/readyz")
        assert response.status == 503
        assert (await response.json())["sourceOpen"] is False
        metrics.set_source_open(True)
        assert (await client.get("/readyz")).status == 503
        metrics.set_track_published(True)
        metrics.set_mode("passthrough")
        response = await client.get("/readyz")
        assert response.status == 200
        assert (await response.json())["mode"] == "passthrough"


async def test_metrics_name_what_the_issue_asks_for() -> None:
    metrics = Metrics()
    metrics.frames_read.inc()
    metrics.published()
    metrics.reconnects.labels("livekit", "disconnected").inc()
    metrics.set_mode("transcode")
    async with TestClient(TestServer(build_app(metrics))) as client:
        text = await (await client.get("/metrics")).text()
    for name in (
        "overshoot_publisher_frames_read_total 1.0",
        "overshoot_publisher_frames_published_total 1.0",
        "overshoot_publisher_fps",
        'overshoot_publisher_reconnects_total{cause="disconnected",component="livekit"} 1.0',
        'overshoot_publisher_mode{mode="transcode"} 1.0',
        "overshoot_publisher_decoder_opens_total 0.0",
    ):
        assert name in text


def test_fps_meter() -> None:
    meter = FpsMeter(window=5.0)
    for i in range(76):
        meter.tick(100 + i / 15)
    assert meter.rate(105.0) == pytest.approx(15, rel=0.02)
    assert meter.rate(120.0) == 0.0


async def test_readyz_in_standby_means_the_source_delivers() -> None:
    """With no stream to publish into, readiness is the operator's signal that the source
    works: open and a frame read within DELIVERING_SECONDS."""
    now = [1000.0]
    metrics = Metrics()
    metrics.state.clock = lambda: now[0]
    metrics.state.standby = True
    async with TestClient(TestServer(build_app(metrics))) as client:
        metrics.set_source_open(True)
        assert (await client.get("/readyz")).status == 503  # open, nothing read yet
        metrics.read()
        response = await client.get("/readyz")
        assert response.status == 200 and (await response.json())["standby"] is True
        now[0] += DELIVERING_SECONDS + 0.1
        assert (await client.get("/readyz")).status == 503
        metrics.read()
        metrics.state.standby = False
        assert (await client.get("/readyz")).status == 503  # a stream again: needs the track
