"""The deadline clock and the fps cap, against a fake clock."""

from __future__ import annotations

import pytest

from overshoot_publisher.pacing import FpsLimiter, Pacer, scaled_size

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pacer_spaces_frames_by_media_time() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    assert pacer.delay(0.0) == 0.0
    assert pacer.delay(1 / 15) == pytest.approx(1 / 15)
    clock.now += 1 / 15
    assert pacer.delay(2 / 15) == pytest.approx(1 / 15)


def test_pacer_reanchors_when_behind_instead_of_bursting() -> None:
    clock = FakeClock()
    pacer = Pacer(clock, max_lag=0.25)
    pacer.delay(0.0)
    clock.now += 2.0  # a two-second stall
    assert pacer.delay(0.1) == 0.0
    assert pacer.reanchors == 1
    # After re-anchoring, the next frame is paced from the new anchor, not bursted.
    assert pacer.delay(0.2) == pytest.approx(0.1)


def test_pacer_small_lateness_is_absorbed_without_reanchoring() -> None:
    clock = FakeClock()
    pacer = Pacer(clock, max_lag=0.25)
    pacer.delay(0.0)
    clock.now += 0.2
    assert pacer.delay(0.1) == 0.0
    assert pacer.reanchors == 0
    assert pacer.delay(0.3) == pytest.approx(0.1)


def test_pacer_reanchors_on_a_jump_backwards_or_far_forwards() -> None:
    clock = FakeClock()
    pacer = Pacer(clock, max_lead=1.0)
    pacer.delay(50.0)
    assert pacer.delay(0.0) == 0.0  # a looped file restarts its clock
    assert pacer.delay(30.0) == 0.0  # a camera jumps ahead
    assert pacer.reanchors == 2


def _admitted(source_fps: float, cap: float, seconds: float = 10.0, start: float = 0.0) -> int:
    limiter = FpsLimiter(cap)
    count = round(source_fps * seconds)
    return sum(limiter.admit(start + i / source_fps) for i in range(count))


@pytest.mark.parametrize(
    ("source_fps", "cap", "expected"),
    [(30, 15, 15), (25, 15, 15), (30, 6, 6), (60, 30, 30), (10, 15, 10), (29.97, 30, 29.97)],
)
def test_fps_limiter_rate(source_fps: float, cap: float, expected: float) -> None:
    rate = _admitted(source_fps, cap) / 10.0
    assert rate == pytest.approx(expected, rel=0.03)


def test_fps_limiter_keeps_every_other_frame_for_half_rate() -> None:
    limiter = FpsLimiter(15)
    kept = [i for i in range(10) if limiter.admit(i / 30)]
    assert kept == [0, 2, 4, 6, 8]


def test_fps_limiter_survives_time_going_backwards() -> None:
    limiter = FpsLimiter(10)
    assert limiter.admit(100.0)
    assert limiter.admit(0.0)  # re-anchored, not starved for 100 s
    assert not limiter.admit(0.01)


@pytest.mark.parametrize(
    ("size", "max_height", "expected"),
    [
        ((1920, 1080), 720, (1280, 720)),
        ((1920, 1080), 480, (852, 480)),
        ((640, 360), 720, (640, 360)),
        ((1280, 720), 720, (1280, 720)),
        ((641, 361), 1080, (640, 360)),
    ],
)
def test_scaled_size(size: tuple[int, int], max_height: int, expected: tuple[int, int]) -> None:
    assert scaled_size(*size, max_height) == expected
