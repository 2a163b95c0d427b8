"""The publisher survives what production throws at it without operator help: a camera
outage, a LiveKit restart, an old token that no longer works, a recreated remote stream;
and it exits with a useful termination message for what only the user can fix."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.media import (
    REVOCABLE_KEY,
    MediaStack,
    PublisherProcess,
    StreamHandle,
    write_secret,
)
from overshoot_localstack.rtsp import RtspServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

FPS = 15


def _counter(process: PublisherProcess, name: str) -> float:
    return process.metrics().get(name, 0.0)


def _livekit_reconnects(process: PublisherProcess) -> float:
    return sum(
        value
        for name, value in process.metrics().items()
        if name.startswith("overshoot_publisher_reconnects_total{")
        and 'component="livekit"' in name
    )


def _revocable(media_stack: MediaStack, stream: StreamHandle) -> StreamHandle:
    """The stream's publish grant, with a token signed by the key tests can revoke."""
    token = media_stack.livekit.token(
        f"overshoot-{stream.id}",
        f"publisher-{stream.id}",
        can_subscribe=False,
        api_key=REVOCABLE_KEY,
    )
    return StreamHandle(stream.id, stream.url, token)


def test_rtsp_outage_then_publishing_resumes(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
    rtsp_camera: Callable[..., RtspServer],
) -> None:
    camera = rtsp_camera(fps=FPS)
    stream = media_stack.create_stream()
    process = publisher({"source": {"rtsp": {"url": camera.url}}}, stream).start()
    process.wait_ready()
    media_stack.wait_for_frames(stream.id, count=10)

    camera.kill()
    time.sleep(8)  # longer than the read timeout: the publisher sees the loss
    stalled = media_stack.frames(stream.id)
    time.sleep(1)
    assert media_stack.frames(stream.id) == stalled, "frames kept arriving with the camera off"
    status, body = process.readyz()
    assert status == 503
    assert body["sourceOpen"] is False

    camera.start()
    media_stack.wait_for_frames(stream.id, count=30, timeout=60)
    process.wait_ready()
    assert process.poll() is None
    reconnects = sum(
        value
        for name, value in process.metrics().items()
        if name.startswith("overshoot_publisher_reconnects_total{") and 'component="source"' in name
    )
    assert reconnects >= 1


def test_livekit_restart_reconnects_with_the_newest_token(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
) -> None:
    stream = media_stack.create_stream()
    process = publisher(
        {"source": {"testPattern": {"width": 320, "height": 240, "fps": FPS}}},
        _revocable(media_stack, stream),
    ).start()
    process.wait_ready()
    media_stack.wait_for_frames(stream.id, count=10)

    # The operator's keepalive brought a fresh token and the kubelet updated the files;
    # the server comes back without the first token's key, so that token is dead.
    write_secret(process.secret_dir, media_stack.keepalive(stream))
    media_stack.livekit.restart(rotate=[REVOCABLE_KEY], kill=True, down_for=15)

    media_stack.wait_for_frames(stream.id, count=30, timeout=90)
    assert _livekit_reconnects(process) >= 1
    assert process.poll() is None


def test_a_revoked_token_is_retried_until_the_file_changes(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
) -> None:
    stream = media_stack.create_stream()
    process = publisher(
        {"source": {"testPattern": {"width": 320, "height": 240, "fps": FPS}}},
        _revocable(media_stack, stream),
    ).start()
    process.wait_ready()
    media_stack.wait_for_frames(stream.id, count=10)

    media_stack.livekit.restart(rotate=[REVOCABLE_KEY], kill=True, down_for=5)
    # The SDK may resume on its own with a token the server refreshed while it was
    # connected; the server then removes the publisher, which must come back through its
    # own reconnect, and only the revoked token is mounted.
    time.sleep(8)
    asyncio.run(
        media_stack.livekit.remove_participant(f"overshoot-{stream.id}", f"publisher-{stream.id}")
    )
    # The publisher keeps trying, stays alive, and nothing reaches the room.
    time.sleep(10)
    stalled = media_stack.frames(stream.id)
    time.sleep(10)
    assert process.poll() is None
    assert media_stack.frames(stream.id) == stalled
    logs = process.logs()
    rejected = [
        line
        for line in logs.splitlines()
        if "Could not connect to LiveKit" in line and "401" in line
    ]
    assert len(rejected) >= 2, logs[-3000:]

    fresh = media_stack.keepalive(stream)
    write_secret(process.secret_dir, fresh)
    media_stack.wait_for_frames(stream.id, count=30, timeout=60)
    logs = process.logs()
    for token in (stream.token, fresh.token):
        assert token not in logs
        assert token.split(".")[2] not in logs


def test_a_new_stream_id_moves_the_publisher_to_the_new_room(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
) -> None:
    old = media_stack.create_stream()
    process = publisher(
        {"source": {"testPattern": {"width": 320, "height": 240, "fps": FPS}}}, old
    ).start()
    process.wait_ready()
    media_stack.wait_for_frames(old.id, count=10)

    new = media_stack.create_stream()
    write_secret(process.secret_dir, new)
    media_stack.wait_for_frames(new.id, count=30, timeout=60)
    # The old room gets nothing more once the publisher left it.
    settled = media_stack.frames(old.id)
    time.sleep(3)
    assert media_stack.frames(old.id) == settled
    assert media_stack.get_stream(new.id)["last_frame_index"] is not None
    assert (
        _counter(
            process,
            'overshoot_publisher_reconnects_total{cause="stream_id_changed",component="livekit"}',
        )
        == 1
    )


def test_wrong_camera_credentials_exit_with_a_termination_message(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
    rtsp_camera: Callable[..., RtspServer],
) -> None:
    camera = rtsp_camera(fps=FPS, username="viewer", password="right-password")
    process = publisher(
        {"source": {"rtsp": {"url": camera.url, "credentialsSecretRef": {"name": "lobby-cam"}}}},
        media_stack.create_stream(),
    )
    process.set_credentials("viewer", "wrong-Pa55word")
    process.start()
    code = process.wait(timeout=60)
    assert code != 0
    message = process.termination_log.read_text()
    assert "refused the credentials" in message
    assert "SourceUnauthorized" in message
    assert "lobby-cam" in message
    assert camera.url in message
    for text in (message, process.logs()):
        assert "wrong-Pa55word" not in text
        assert "wrong-Pa55word".replace("5", "%35") not in text


@pytest.mark.parametrize("kind", ["file", "http"])
def test_a_missing_source_exits_with_a_termination_message(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
    tmp_path: Path,
    kind: str,
) -> None:
    if kind == "file":
        source = {"file": {"path": str(tmp_path / "no-such-clip.mp4")}}
    else:
        # The emulator answers 404 for an unknown path: a real HTTP server on loopback.
        source = {"url": {"url": media_stack.emulator.url + "/no-such/live.m3u8"}}
    process = publisher({"source": source}, media_stack.create_stream()).start()
    code = process.wait(timeout=60)
    assert code != 0
    message = process.termination_log.read_text()
    assert "SourceNotFound" in message
    assert "does not exist" in message


def test_passthrough_of_an_unsupported_codec_exits_with_a_termination_message(
    media_stack: MediaStack,
    publisher: Callable[..., PublisherProcess],
    clip: Callable[..., Path],
) -> None:
    path = clip("vp8.webm", codec="vp8", fps=FPS, seconds=2)
    process = publisher(
        {"source": {"file": {"path": str(path)}}, "video": {"mode": "Passthrough"}},
        media_stack.create_stream(),
    ).start()
    code = process.wait(timeout=60)
    assert code != 0
    message = process.termination_log.read_text()
    assert "UnsupportedCodec" in message
    assert "vp8" in message
    assert "Auto or Transcode" in message
