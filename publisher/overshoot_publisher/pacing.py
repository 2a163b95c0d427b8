"""Timing decisions for the media loop: when to send a frame and which frames to drop.

Pure: the clock is injected, nothing sleeps here. The media loop asks `Pacer.delay(t)` how
long to wait before sending a frame whose media time is `t`, and `FpsLimiter.admit(t)`
whether a frame survives the `maxFps` cap.

A file or a test pattern can be read far faster than real time, so frames are sent
against a deadline clock: media time mapped onto the wall clock from an anchor. When the
loop falls behind (a slow decode, a stalled source) or media time jumps (a file loops, a
camera restarts its clock), the anchor moves to now instead of bursting to catch up or
waiting out a gap.
"""

from __future__ import annotations

from collections.abc import Callable


class Pacer:
    """Maps media time onto a monotonic clock and says how long to wait for each frame."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        max_lag: float = 0.25,
        max_lead: float = 1.0,
    ) -> None:
        # Behind by more than max_lag: drop the backlog's timing and re-anchor at now.
        # Ahead by more than max_lead: media time jumped forwards; re-anchor too.
        self._clock = clock
        self._max_lag = max_lag
        self._max_lead = max_lead
        self._anchor_wall: float | None = None
        self._anchor_media = 0.0
        self.reanchors = 0

    def reset(self) -> None:
        self._anchor_wall = None

    def delay(self, media_time: float) -> float:
        """Seconds to wait before sending the frame at `media_time` (0 = send now)."""
        now = self._clock()
        if self._anchor_wall is None:
            self._anchor(now, media_time)
            return 0.0
        due = self._anchor_wall + (media_time - self._anchor_media)
        wait = due - now
        if wait < -self._max_lag or wait > self._max_lead:
            self.reanchors += 1
            self._anchor(now, media_time)
            return 0.0
        return max(wait, 0.0)

    def _anchor(self, now: float, media_time: float) -> None:
        self._anchor_wall = now
        self._anchor_media = media_time


class FpsLimiter:
    """Keeps at most `max_fps` frames per second of media time, spread evenly.

    A slot opens every 1/max_fps seconds; a frame is admitted when its time reaches the
    next open slot. A source slower than the cap passes untouched; a jump backwards or far
    forwards in media time re-anchors the slots.
    """

    def __init__(self, max_fps: float) -> None:
        if max_fps <= 0:
            raise ValueError(f"max_fps must be positive, got {max_fps}")
        self._interval = 1.0 / max_fps
        self._next: float | None = None
        # A quarter slot of tolerance: timestamps jitter by a millisecond or two, and a
        # frame exactly half a slot early must still be dropped (30 -> 15 keeps every other).
        self._slack = self._interval / 4

    def admit(self, media_time: float) -> bool:
        if self._next is None or media_time < self._next - 2 * self._interval:
            self._next = media_time + self._interval
            return True
        if media_time + self._slack < self._next:
            return False
        # Advance by whole slots; far behind means a gap in the source: re-anchor.
        self._next += self._interval
        if media_time - self._next > 2 * self._interval:
            self._next = media_time + self._interval
        return True


def scaled_size(width: int, height: int, max_height: int) -> tuple[int, int]:
    """The size to publish: at most `max_height` tall, aspect kept, both sides even (I420)."""
    if height <= max_height:
        out_w, out_h = width, height
    else:
        out_h = max_height
        out_w = round(width * max_height / height)
    return max(2, out_w - out_w % 2), max(2, out_h - out_h % 2)
