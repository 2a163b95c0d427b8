"""Reading real encoded clips (made on the spot with PyAV): passthrough units, decoded
frames, loops and the errors a user must fix. No servers."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from overshoot_localstack.media import make_clip
from overshoot_publisher.config import Source
from overshoot_publisher.errors import ModeSwitch, SourceRejected, SourceUnavailable
from overshoot_publisher.h264 import nal_types
from overshoot_publisher.sources import MediaInput, build_open_spec

pytestmark = pytest.mark.unit


def _open(path: Path, *, loop: bool = False) -> MediaInput:
    source = Source.model_validate({"file": {"path": str(path), "loop": loop}})
    return MediaInput(build_open_spec(source, None))


def test_mp4_units_are_annexb_with_parameter_sets_on_every_idr(tmp_path: Path) -> None:
    media = _open(make_clip(tmp_path / "a.mp4", fps=15, seconds=2))
    try:
        units = list(itertools.islice(media.read_units(strict=True), 30))
    finally:
        media.close()
    assert units[0].keyframe
    assert [u.keyframe for u in units].count(True) == 1  # GOP of 2 s
    assert nal_types(units[0].data)[:2] == [7, 8]
    assert all(u.data.startswith(b"\x00\x00") for u in units)


def test_a_looping_file_keeps_media_time_increasing(tmp_path: Path) -> None:
    media = _open(make_clip(tmp_path / "a.mp4", fps=15, seconds=1), loop=True)
    try:
        times = [u.media_time for u in itertools.islice(media.read_units(strict=True), 45)]
    finally:
        media.close()
    assert all(b > a for a, b in itertools.pairwise(times))
    assert times[-1] == pytest.approx(44 / 15, abs=0.1)


def test_a_file_that_ends_is_a_transient_loss(tmp_path: Path) -> None:
    media = _open(make_clip(tmp_path / "a.mp4", fps=15, seconds=1))
    try:
        with pytest.raises(SourceUnavailable) as caught:
            list(media.read_units(strict=True))
    finally:
        media.close()
    assert caught.value.cause == "eof"


def test_b_frames_found_while_reading_switch_auto_and_reject_passthrough(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "b.mp4", fps=15, seconds=2, bframes=3)
    for strict, error in ((False, ModeSwitch), (True, SourceRejected)):
        media = _open(path)
        try:
            with pytest.raises(error, match="B-frames"):
                list(media.read_units(strict=strict))
        finally:
            media.close()


def test_frames_are_scaled_and_capped(tmp_path: Path) -> None:
    opened: list[bool] = []
    source = Source.model_validate(
        {"file": {"path": str(make_clip(tmp_path / "a.mp4", width=1280, height=720, fps=30))}}
    )
    media = MediaInput(build_open_spec(source, None), on_decoder_open=lambda: opened.append(True))
    try:
        frames = list(itertools.islice(media.read_frames(max_height=360, max_fps=10), 20))
    finally:
        media.close()
    assert opened == [True]
    assert {(f.width, f.height) for f in frames} == {(640, 360)}
    assert len(frames[0].data) == 640 * 360 * 3 // 2
    spacing = [b.media_time - a.media_time for a, b in itertools.pairwise(frames)]
    assert min(spacing) == pytest.approx(0.1, abs=0.04)


def test_a_missing_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SourceRejected) as caught:
        _open(tmp_path / "nope.mp4")
    assert caught.value.reason == "SourceNotFound"
