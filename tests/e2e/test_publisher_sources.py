"""Every source type reaches the media gateway through a real LiveKit server, at its rate;
passthrough is really passthrough; transcode honours maxHeight and maxFps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fixtures.media import MediaStack, PublisherProcess, write_secret
from overshoot_localstack.media import HlsSource
from overshoot_localstack.rtsp import RtspServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FPS = 15


def _publish(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
    source: dict[str, Any],
    video: dict[str, Any] | None = None,
) -> tuple[str, PublisherProcess]:
    stream = media_stack.create_stream()
    config: dict[str, Any] = {"source": source}
    if video is not None:
        config["video"] = video
    process = publisher(config, stream).start()
    process.wait_ready()
    media_stack.wait_for_frames(stream.id, count=10)
    return stream.id, process


def _assert_rate(media_stack: MediaStack, stream_id: str, expected: float) -> float:
    fps = media_stack.measure_fps(stream_id, seconds=8)
    assert abs(fps - expected) <= 0.1 * expected, (
        f"the gateway decoded {fps:.2f} fps, expected {expected} +/- 10%"
    )
    return fps


@pytest.mark.parametrize("transport", ["TCP", "UDP"])
def test_rtsp_reaches_the_gateway_at_its_rate(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
    rtsp_camera: Callable[..., RtspServer],
    transport: str,
) -> None:
    camera = rtsp_camera(fps=FPS, username="viewer", password="s3cr3t-pass")
    process = publisher({"source": {"rtsp": {"url": camera.url, "transport": transport}}})
    process.set_credentials("viewer", "s3cr3t-pass")
    stream = media_stack.create_stream()
    write_secret(process.secret_dir, stream)
    process.start()
    process.wait_ready()
    media_stack.wait_for_frames(stream.id, count=10)
    _assert_rate(media_stack, stream.id, FPS)
    assert process.metrics()['overshoot_publisher_mode{mode="passthrough"}'] == 1
    assert "s3cr3t-pass" not in process.logs()


def test_hls_reaches_the_gateway_at_its_rate(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
    hls_source: Callable[..., HlsSource],
) -> None:
    hls = hls_source(fps=FPS)
    stream_id, _ = _publish(media_stack, publisher, {"url": {"url": hls.url}})
    _assert_rate(media_stack, stream_id, FPS)


def test_looping_file_reaches_the_gateway_at_its_rate(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
    clip: Callable[..., Path],
) -> None:
    # A 3 s clip loops at least twice within the measurement window.
    path = clip("loop.mp4", fps=FPS, seconds=3)
    stream_id, process = _publish(
        media_stack, publisher, {"file": {"path": str(path), "loop": True}}
    )
    _assert_rate(media_stack, stream_id, FPS)
    assert process.metrics()['overshoot_publisher_mode{mode="passthrough"}'] == 1


def test_test_pattern_reaches_the_gateway_at_the_configured_size_and_rate(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
) -> None:
    source = {"testPattern": {"pattern": "smpte", "width": 640, "height": 480, "fps": 12}}
    stream_id, _ = _publish(media_stack, publisher, source, {"maxHeight": 720, "maxFps": 15})
    _assert_rate(media_stack, stream_id, 12)
    stats = media_stack.gateway(stream_id)
    assert (stats["width"], stats["height"]) == (640, 480)


def test_passthrough_never_opens_a_decoder_and_the_gateway_still_decodes(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
    rtsp_camera: Callable[..., RtspServer],
) -> None:
    camera = rtsp_camera(width=1280, height=720, fps=FPS)
    stream_id, process = _publish(
        media_stack, publisher, {"rtsp": {"url": camera.url}}, {"mode": "Passthrough"}
    )
    _assert_rate(media_stack, stream_id, FPS)
    metrics = process.metrics()
    assert metrics["overshoot_publisher_decoder_opens_total"] == 0
    assert metrics['overshoot_publisher_mode{mode="passthrough"}'] == 1
    assert metrics["overshoot_publisher_frames_published_total"] > 100
    stats = media_stack.gateway(stream_id)
    assert (stats["width"], stats["height"]) == (1280, 720)


def test_transcode_honours_max_height_and_max_fps(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
    rtsp_camera: Callable[..., RtspServer],
) -> None:
    camera = rtsp_camera(width=1280, height=720, fps=30)
    stream_id, process = _publish(
        media_stack,
        publisher,
        {"rtsp": {"url": camera.url}},
        {"mode": "Auto", "maxHeight": 360, "maxFps": 10},
    )
    _assert_rate(media_stack, stream_id, 10)
    stats = media_stack.gateway(stream_id)
    assert (stats["width"], stats["height"]) == (640, 360)
    metrics = process.metrics()
    assert metrics['overshoot_publisher_mode{mode="transcode"}'] == 1
    assert metrics["overshoot_publisher_decoder_opens_total"] >= 1


@pytest.mark.parametrize(
    ("name", "clip_args"),
    [("bframes.mp4", {"bframes": 3}), ("vp8.webm", {"codec": "vp8"})],
    ids=["h264-b-frames", "vp8"],
)
def test_auto_transcodes_what_webrtc_cannot_carry(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
    clip: Callable[..., Path],
    name: str,
    clip_args: dict[str, Any],
) -> None:
    path = clip(name, fps=FPS, seconds=3, **clip_args)
    stream_id, process = _publish(
        media_stack, publisher, {"file": {"path": str(path), "loop": True}}, {"mode": "Auto"}
    )
    _assert_rate(media_stack, stream_id, FPS)
    assert process.metrics()['overshoot_publisher_mode{mode="transcode"}'] == 1


def test_auto_transcodes_hls_with_b_frames(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
    hls_source: Callable[..., HlsSource],
) -> None:
    hls = hls_source(fps=FPS, bframes=2)
    stream_id, process = _publish(media_stack, publisher, {"url": {"url": hls.url}})
    _assert_rate(media_stack, stream_id, FPS)
    assert process.metrics()['overshoot_publisher_mode{mode="transcode"}'] == 1
