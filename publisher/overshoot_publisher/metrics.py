"""The publisher's Prometheus metrics and the readiness state behind /readyz.

One `Metrics` object per run, with its own registry (tests run several publishers in one
process). The media loop and the session write it; health.py serves it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

MODES = ("passthrough", "transcode", "generate")


# In standby, the source counts as delivering while a frame was read this recently.
DELIVERING_SECONDS = 5.0


@dataclass
class State:
    """What /readyz reports: the source is open and a track is published; in standby (the
    operator holds no stream for this publisher), that the source delivers frames."""

    source_open: bool = False
    track_published: bool = False
    mode: str | None = None
    stream_id: str | None = None
    last_error: str | None = None
    standby: bool = False
    # Monotonic time of the last frame read from the source.
    last_read_at: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def delivering(self, now: float) -> bool:
        return self.last_read_at is not None and now - self.last_read_at <= DELIVERING_SECONDS

    @property
    def ready(self) -> bool:
        if not self.source_open:
            return False
        if self.standby:
            # The operator's signal to create a stream again: the source works.
            return self.delivering(self.clock())
        return self.track_published


class FpsMeter:
    """Frames per second over a sliding window of recent frame instants."""

    def __init__(self, window: float = 5.0) -> None:
        self._window = window
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = now - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self._window:
            self._times.popleft()


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    state: State = field(default_factory=State)

    def __post_init__(self) -> None:
        r = self.registry
        p = "overshoot_publisher_"
        self.frames_read = Counter(
            p + "frames_read", "Frames (or access units) read from the source", registry=r
        )
        self.frames_published = Counter(
            p + "frames_published", "Frames handed to LiveKit", registry=r
        )
        self.frames_dropped = Counter(
            p + "frames_dropped", "Frames not published, by reason", ["reason"], registry=r
        )
        self.fps = Gauge(p + "fps", "Frames published per second over the last 5 s", registry=r)
        self.reconnects = Counter(
            p + "reconnects",
            "Reconnections, by component (source, livekit) and cause",
            ["component", "cause"],
            registry=r,
        )
        self.mode = Gauge(
            p + "mode", "The media path in use (1 for the active one)", ["mode"], registry=r
        )
        self.decoder_opens = Counter(
            p + "decoder_opens", "Times a video decoder was opened for the source", registry=r
        )
        self.keyframe_requests = Counter(
            p + "keyframe_requests", "Keyframe requests from WebRTC subscribers", registry=r
        )
        self.source_open = Gauge(p + "source_open", "1 while the source is open", registry=r)
        self.track_published = Gauge(
            p + "track_published", "1 while the video track is published", registry=r
        )
        for mode in MODES:
            self.mode.labels(mode).set(0)
        self._meter = FpsMeter()
        self.fps.set_function(lambda: self._meter.rate(time.monotonic()))

    def read(self) -> None:
        """A frame (or access unit) was read from the source (any thread)."""
        self.frames_read.inc()
        self.state.last_read_at = self.state.clock()

    def published(self, now: float | None = None) -> None:
        self.frames_published.inc()
        self._meter.tick(time.monotonic() if now is None else now)

    def set_mode(self, mode: str | None) -> None:
        self.state.mode = mode
        for m in MODES:
            self.mode.labels(m).set(1 if m == mode else 0)

    def set_source_open(self, value: bool) -> None:
        self.state.source_open = value
        self.source_open.set(1 if value else 0)

    def set_track_published(self, value: bool) -> None:
        self.state.track_published = value
        self.track_published.set(1 if value else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
