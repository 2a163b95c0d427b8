"""Frame accounting for one stream: every media field GET /streams/{id} reports.

Pure bookkeeping fed by whoever sees frames arrive (the media gateway with real decoded
frames, or the admin surface when tests fake media). Knows nothing about HTTP, LiveKit or
stream lifecycles; time always comes in as an argument (epoch milliseconds).

Memory is bounded per stream: retained frames are kept as one segment per wall-clock
second (at most ~600 of them) and the fps window as one entry per arrival instant inside
the last few seconds, so a stream at 30 fps costs a few kilobytes however long it lives.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

# Documented: "frames are retained about 600 s".
RETENTION_MS = 600_000
# Guess: the window behind `recent_fps` is undocumented; 5 s smooths jitter yet drops to
# zero soon after a publisher stops.
FPS_WINDOW_MS = 5_000


@dataclass(slots=True)
class _Second:
    """The frames that arrived within one wall-clock second (a retention segment)."""

    second: int
    first_index: int
    first_at_ms: int
    last_index: int
    last_at_ms: int


@dataclass(frozen=True, slots=True)
class FrameSnapshot:
    """The frame fields of the stream document; all None until the first frame."""

    stream_time_ms: int | None = None
    first_frame_at_ms: int | None = None
    last_frame_at_ms: int | None = None
    last_frame_index: int | None = None
    first_available_frame_index: int | None = None
    first_available_frame_at_ms: int | None = None
    recent_fps: float | None = None
    retained_frame_count: int | None = None
    evicted_frame_count: int | None = None


NO_FRAMES = FrameSnapshot()


class FrameLedger:
    """Lifetime frame counters of one stream. Frame indices start at 0 and never reset."""

    __slots__ = (
        "_retained",
        "_retained_count",
        "_window",
        "_window_count",
        "first_frame_at_ms",
        "last_frame_at_ms",
        "total",
    )

    def __init__(self) -> None:
        self.total = 0
        self.first_frame_at_ms: int | None = None
        self.last_frame_at_ms: int | None = None
        self._retained: deque[_Second] = deque()
        self._retained_count = 0
        self._window: deque[list[int]] = deque()  # [at_ms, count], oldest first
        self._window_count = 0

    def record(self, count: int, at_ms: int) -> None:
        """`count` frames arrived at `at_ms`."""
        if count <= 0:
            raise ValueError(f"frame count must be positive, got {count}")
        # A report from the past (a gateway thread running late) must not make time or
        # indices run backwards: it is booked at the latest instant already seen.
        if self.last_frame_at_ms is not None and at_ms < self.last_frame_at_ms:
            at_ms = self.last_frame_at_ms
        if self.first_frame_at_ms is None:
            self.first_frame_at_ms = at_ms
        first_index = self.total
        self.total += count
        self.last_frame_at_ms = at_ms

        second = at_ms // 1000
        tail = self._retained[-1] if self._retained else None
        if tail is not None and tail.second == second:
            tail.last_index = self.total - 1
            tail.last_at_ms = at_ms
        else:
            self._retained.append(_Second(second, first_index, at_ms, self.total - 1, at_ms))
        self._retained_count += count

        if self._window and self._window[-1][0] == at_ms:
            self._window[-1][1] += count
        else:
            self._window.append([at_ms, count])
        self._window_count += count
        self._prune(at_ms)

    def record_run(self, count: int, fps: float, end_ms: int) -> None:
        """`count` frames arrived evenly at `fps`, the last one at `end_ms`.

        Frames that would already be past retention are counted without being
        materialised, so the cost is bounded by the retention window, not by `count`.
        """
        if count <= 0:
            raise ValueError(f"frame count must be positive, got {count}")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        interval = 1000.0 / fps
        start = end_ms - (count - 1) * interval
        horizon = end_ms - RETENTION_MS
        skipped = 0 if start > horizon else min(count, math.floor((horizon - start) / interval) + 1)
        if skipped:
            if self.first_frame_at_ms is None:
                self.first_frame_at_ms = round(start)
            self.total += skipped
            self.last_frame_at_ms = max(self.last_frame_at_ms or 0, round(start))
        for i in range(skipped, count):
            self.record(1, end_ms - round((count - 1 - i) * interval))

    def drop_retained(self) -> None:
        """Forget retained frames (DELETE drops them); lifetime counters stay."""
        self._retained.clear()
        self._retained_count = 0

    def snapshot(self, now_ms: int) -> FrameSnapshot:
        if self.first_frame_at_ms is None or self.last_frame_at_ms is None:
            return NO_FRAMES
        self._prune(now_ms)
        head = self._retained[0] if self._retained else None
        return FrameSnapshot(
            # Guess: "stream time" is media time, first frame to last frame.
            stream_time_ms=self.last_frame_at_ms - self.first_frame_at_ms,
            first_frame_at_ms=self.first_frame_at_ms,
            last_frame_at_ms=self.last_frame_at_ms,
            last_frame_index=self.total - 1,
            first_available_frame_index=head.first_index if head else None,
            first_available_frame_at_ms=head.first_at_ms if head else None,
            recent_fps=self._recent_fps(now_ms),
            # Guess: the docs' example shows retained == last_frame_index with first
            # available index 0 (an off-by-one either way); we count frames, so
            # retained = last - first_available + 1.
            retained_frame_count=self._retained_count,
            evicted_frame_count=self.total - self._retained_count,
        )

    def stream_time_ms(self) -> int | None:
        if self.first_frame_at_ms is None or self.last_frame_at_ms is None:
            return None
        return self.last_frame_at_ms - self.first_frame_at_ms

    def _recent_fps(self, now_ms: int) -> float:
        # Frames after the oldest one in the window over the time since it: exact for a
        # steady stream read at a frame's arrival, and decaying to 0 once frames stop.
        if not self._window:
            return 0.0
        oldest_at, oldest_count = self._window[0]
        span = now_ms - oldest_at
        later = self._window_count - oldest_count
        if span <= 0 or later <= 0:
            return 0.0
        return round(later * 1000.0 / span, 2)

    def _prune(self, now_ms: int) -> None:
        retained_after = now_ms - RETENTION_MS
        while self._retained and self._retained[0].last_at_ms <= retained_after:
            gone = self._retained.popleft()
            self._retained_count -= gone.last_index - gone.first_index + 1
        window_after = now_ms - FPS_WINDOW_MS
        while self._window and self._window[0][0] <= window_after:
            self._window_count -= self._window.popleft()[1]
