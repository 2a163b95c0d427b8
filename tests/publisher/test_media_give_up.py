"""A source that never delivered a frame ends the publisher after the bound, with the
cause; one that delivered and then dropped is retried in-process."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from overshoot_publisher.config import PublisherConfig
from overshoot_publisher.errors import SourceRejected, SourceUnavailable
from overshoot_publisher.media import MediaLoop
from overshoot_publisher.metrics import Metrics
from overshoot_publisher.mounted import Credentials
from overshoot_publisher.session import Session
from overshoot_publisher.sources import SourceReader, build_open_spec

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def loop(tmp_path: Path, url: str, clock: Clock, give_up: float, **kw: object) -> MediaLoop:
    config = PublisherConfig.model_validate(
        {"namespace": "cams", "name": "lobby", "source": {"rtsp": {"url": url}}}
    )
    metrics = Metrics()
    return MediaLoop(
        config,
        kw.get("credentials"),  # type: ignore[arg-type]
        Session(tmp_path, metrics),
        metrics,
        clock=clock,
        give_up_seconds=give_up,
    )


@pytest.mark.parametrize(
    ("delivered", "waited", "gives_up"),
    [
        pytest.param(False, 29.9, False, id="never-delivered-within-the-bound"),
        pytest.param(False, 30.0, True, id="never-delivered-at-the-bound"),
        pytest.param(True, 3600.0, False, id="delivered-then-dropped"),
    ],
)
def test_give_up_only_on_a_source_that_never_delivered(
    tmp_path: Path, delivered: bool, waited: float, gives_up: bool
) -> None:
    clock = Clock()
    media = loop(tmp_path, "rtsp://10.0.0.9:554/cam", clock, 30.0)
    if delivered:
        media._first_frame()
    clock.now += waited
    drop = SourceUnavailable("Source rtsp://10.0.0.9:554/cam refused the connection")
    if not gives_up:
        media._give_up_if_never_delivered(drop)
        return
    with pytest.raises(SourceRejected) as err:
        media._give_up_if_never_delivered(drop)
    assert err.value.reason == "SourceUnreachable"
    assert "delivered no frame in 30s" in str(err.value)
    assert "refused the connection" in str(err.value)


async def test_an_unreachable_camera_ends_the_loop_with_the_cause(tmp_path: Path) -> None:
    """Through the real PyAV open of a camera that refuses connections."""
    url = f"rtsp://viewer:pw-9d2f@127.0.0.1:{closed_port()}/stream1"
    media = loop(
        tmp_path,
        url,
        Clock(),
        0.0,
        credentials=Credentials(username="viewer", password="pw-9d2f"),
    )
    with pytest.raises(SourceRejected) as err:
        await media.run()
    message = str(err.value)
    assert err.value.reason == "SourceUnreachable"
    assert "127.0.0.1" in message
    assert "pw-9d2f" not in message and "viewer:" not in message, message


def test_the_give_up_counts_what_every_attempt_said(tmp_path: Path) -> None:
    """One attempt that timed out after several refusals: the message says both."""
    clock = Clock()
    media = loop(tmp_path, "rtsp://10.0.0.9:554/cam", clock, 30.0)
    source = "Source rtsp://10.0.0.9:554/cam"
    for _ in range(5):
        media._give_up_if_never_delivered(SourceUnavailable(f"{source} refused the connection"))
    clock.now += 31
    with pytest.raises(SourceRejected) as err:
        media._give_up_if_never_delivered(
            SourceUnavailable(f"{source} did not answer within 10s (timeout)")
        )
    message = str(err.value)
    assert "refused the connection (5 times); did not answer within 10s (timeout) (1 time)" in (
        message
    )
    assert message.count(source) == 1


async def test_a_host_that_does_not_resolve_is_a_dns_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Told apart from a camera that does not answer, before FFmpeg is asked (it would say
    "Input/output error" for both). The lookup is faked: no DNS query leaves the host."""
    import asyncio

    async def unknown(*_: object, **__: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", unknown)
    config = PublisherConfig.model_validate(
        {"namespace": "cams", "name": "lobby", "source": {"rtsp": {"url": "rtsp://gate-cam/s"}}}
    )
    reader = SourceReader(build_open_spec(config.source, None))
    try:
        with pytest.raises(SourceUnavailable) as err:
            await reader.open()
    finally:
        await reader.aclose()
    assert err.value.cause == "dns"
    assert "'gate-cam' does not resolve (DNS: Name or service not known)" in str(err.value)
