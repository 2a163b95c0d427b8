"""Which media path carries a source under each video.mode."""

from __future__ import annotations

import pytest

from overshoot_publisher.config import Video
from overshoot_publisher.errors import SourceRejected
from overshoot_publisher.media import choose_mode
from overshoot_publisher.sources import StreamInfo

pytestmark = pytest.mark.unit


def info(
    codec: str = "h264",
    height: int = 720,
    fps: float | None = 15.0,
    b_frames: bool = False,
    generated: bool = False,
) -> StreamInfo:
    return StreamInfo(
        codec=codec,
        width=height * 16 // 9,
        height=height,
        fps=fps,
        has_b_frames=b_frames,
        generated=generated,
        live=True,
    )


def test_auto_passes_through_h264_within_limits() -> None:
    assert choose_mode(info(), Video(mode="Auto", max_height=720, max_fps=15)) == "passthrough"


def test_auto_tolerates_ntsc_rates() -> None:
    assert choose_mode(info(fps=29.97), Video(max_height=720, max_fps=30)) == "passthrough"


@pytest.mark.parametrize(
    "source",
    [info(height=1080), info(fps=30.0), info(codec="vp8"), info(codec="hevc"), info(b_frames=True)],
)
def test_auto_transcodes_what_passthrough_cannot_carry_or_exceeds_limits(
    source: StreamInfo,
) -> None:
    assert choose_mode(source, Video(mode="Auto", max_height=720, max_fps=15)) == "transcode"


def test_auto_with_unknown_fps_passes_through() -> None:
    assert choose_mode(info(fps=None), Video()) == "passthrough"


def test_transcode_always_transcodes() -> None:
    assert choose_mode(info(), Video(mode="Transcode")) == "transcode"


def test_passthrough_ignores_limits() -> None:
    assert choose_mode(info(height=1080, fps=30), Video(mode="Passthrough")) == "passthrough"


@pytest.mark.parametrize(
    ("source", "reason", "words"),
    [
        (info(codec="vp8"), "UnsupportedCodec", "vp8"),
        (info(b_frames=True), "UnsupportedVideo", "B-frames"),
    ],
)
def test_passthrough_rejects_what_webrtc_cannot_carry(
    source: StreamInfo, reason: str, words: str
) -> None:
    with pytest.raises(SourceRejected) as caught:
        choose_mode(source, Video(mode="Passthrough"))
    assert caught.value.reason == reason
    assert words in str(caught.value)
    assert "Auto or Transcode" in str(caught.value)


def test_a_generated_pattern_takes_the_raw_path_in_every_mode() -> None:
    for mode in ("Auto", "Passthrough", "Transcode"):
        assert choose_mode(info(generated=True), Video(mode=mode)) == "generate"


def test_a_mode_switch_forces_transcode() -> None:
    assert choose_mode(info(), Video(), force_transcode=True) == "transcode"
