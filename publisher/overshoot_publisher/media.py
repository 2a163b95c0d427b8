"""The media loop: source -> (passthrough | transcode) -> paced frames -> the session's track.

Role:
- `choose_mode()` (pure): which path carries this source under `video.mode`.
  Passthrough carries H.264 without B-frames as demuxed access units: no decoder is ever
  opened (counted in `decoder_opens`). Transcode decodes, scales to `maxHeight`, drops to
  `maxFps` and hands I420 to LiveKit's encoder. `Auto` passes through when the source is
  H.264 without B-frames and already within the limits, and transcodes otherwise.
  A generated test pattern has nothing to pass through: it always takes the raw path.
- `run_media()`: open the source, publish, pump frames against the deadline clock; on
  source loss reopen with backoff and jitter (the track stays published meanwhile); on a
  reason the user must fix, raise `SourceRejected`, and also for a source that has not
  delivered a single frame `SOURCE_GIVE_UP_SECONDS` after the start (so the cause reaches
  the Pod's termination message and the resource's status, and the kubelet's restart
  backoff takes over the retrying).

Keyframes in passthrough (see also session.py): requests cannot be forwarded to a camera.
They are counted, the subscriber waits for the source's next IDR, and in Auto mode a
subscriber left waiting longer than `KEYFRAME_WAIT_LIMIT` (a camera with a very long GOP)
switches the stream to transcode, where LiveKit's own encoder answers keyframe requests.

Boundary: no PyAV (sources.py) and no LiveKit (session.py) here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Literal

from overshoot_publisher.config import PublisherConfig, Video
from overshoot_publisher.errors import ModeSwitch, SourceRejected, SourceUnavailable
from overshoot_publisher.metrics import Metrics
from overshoot_publisher.mounted import Credentials
from overshoot_publisher.pacing import Pacer, scaled_size
from overshoot_publisher.session import Backoff, Session, TrackSpec
from overshoot_publisher.sources import SourceReader, StreamInfo, build_open_spec

logger = logging.getLogger(__name__)

Mode = Literal["passthrough", "transcode", "generate"]

# A source slightly over maxFps (29.97 vs 30, a jittery camera) still counts as within it.
FPS_TOLERANCE = 1.05
# Seconds a subscriber may wait for the source's next IDR before Auto gives up passthrough.
KEYFRAME_WAIT_LIMIT = 10.0
# A source that has delivered no frame this long after the start ends the process (see
# MediaLoop._give_up_if_never_delivered): the status says why about 10 s later (the
# container's exit, then the Pod watch), within the ~30 s a user waits for an answer.
# Long enough for two full attempts at a camera that does not answer (10 s each).
SOURCE_GIVE_UP_SECONDS = 20.0


def choose_mode(
    info: StreamInfo, video: Video, *, force_transcode: bool = False, label: str = "the source"
) -> Mode:
    """The media path for this source; SourceRejected if `Passthrough` cannot carry it."""
    if info.generated:
        return "generate"
    if video.mode == "Transcode" or force_transcode:
        return "transcode"
    problems: list[str] = []
    if info.codec != "h264":
        problems.append(f"its video is {info.codec} and passthrough carries H.264 only")
    elif info.has_b_frames:
        problems.append("it has B-frames, which WebRTC cannot carry")
    if video.mode == "Passthrough":
        if problems:
            raise SourceRejected(
                f"video.mode is Passthrough but {label}: {problems[0]}; set video.mode to "
                "Auto or Transcode",
                reason="UnsupportedCodec" if info.codec != "h264" else "UnsupportedVideo",
            )
        return "passthrough"
    if problems:
        return "transcode"
    if info.height > video.max_height:
        return "transcode"
    if info.fps is not None and info.fps > video.max_fps * FPS_TOLERANCE:
        return "transcode"
    return "passthrough"


class MediaLoop:
    def __init__(
        self,
        config: PublisherConfig,
        credentials: Credentials | None,
        session: Session,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        give_up_seconds: float = SOURCE_GIVE_UP_SECONDS,
    ) -> None:
        self._config = config
        self._spec = build_open_spec(config.source, credentials)
        self._session = session
        self._metrics = metrics
        self._clock = clock
        self._backoff = backoff or Backoff(initial=1.0, cap=15.0)
        self._force_transcode = False
        self._give_up_seconds = give_up_seconds
        self._started = clock()
        self._delivered = False
        # What each failed attempt said, without the source's name: the give-up message
        # counts them (one odd last attempt must not hide what the others said).
        self._attempts: Counter[str] = Counter()

    async def run(self) -> None:
        """Publish until cancelled; raise SourceRejected for what the user must fix."""
        video = self._config.video
        while True:
            reader = SourceReader(
                self._spec,
                on_decoder_open=self._metrics.decoder_opens.inc,
                on_read=self._metrics.read,
            )
            try:
                info = await reader.open()
                mode = choose_mode(
                    info, video, force_transcode=self._force_transcode, label=self._spec.label
                )
                self._metrics.set_source_open(True)
                self._metrics.set_mode(mode)
                logger.info("Publishing %s in %s mode", self._spec.label, mode)
                if mode == "passthrough":
                    await self._pump_units(reader, info, strict=video.mode == "Passthrough")
                else:
                    await self._pump_frames(reader, info)
            except ModeSwitch as switch:
                logger.warning("Switched to transcode: %s", switch.why)
                self._force_transcode = True
            except SourceUnavailable as exc:
                self._give_up_if_never_delivered(exc)
                delay = self._backoff.next_delay()
                self._metrics.reconnects.labels("source", exc.cause).inc()
                self._metrics.state.last_error = str(exc)
                logger.warning("%s; reopening in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            finally:
                self._metrics.set_source_open(False)
                await reader.aclose()

    def _give_up_if_never_delivered(self, exc: SourceUnavailable) -> None:
        """A source that has not delivered one frame since the start is given up on after
        `give_up_seconds`: the exit puts the cause in the termination message, the
        operator's status shows it, and the kubelet's restart backoff (10 s doubling to
        5 min) retries it. A source that did deliver and then dropped (a camera rebooting)
        is retried here, without a restart."""
        source = f"Source {self._spec.label}"
        said = str(exc).removeprefix(source).strip(" :")
        if not self._delivered:
            self._attempts[said] += 1
        waited = self._clock() - self._started
        if self._delivered or waited < self._give_up_seconds:
            return
        attempts = "; ".join(
            f"{text} ({n} time{'' if n == 1 else 's'})" for text, n in self._attempts.most_common()
        )
        raise SourceRejected(
            f"{source} delivered no frame in {waited:.0f}s since the publisher started "
            f"(its attempts: {attempts}); check that it is reachable from the Pod network and "
            "that spec.source names it right",
            reason="SourceUnreachable",
        )

    def _first_frame(self) -> None:
        self._delivered = True
        self._backoff.reset()

    async def _pump_units(self, reader: SourceReader, info: StreamInfo, *, strict: bool) -> None:
        self._session.request_track(
            TrackSpec(
                "encoded", info.width, info.height, info.fps or float(self._config.video.max_fps)
            )
        )
        self._session.await_keyframe()
        pacer = None if info.live else Pacer(self._clock)
        first = True
        async for unit in reader.units(strict=strict):
            if first:
                self._first_frame()
                first = False
            if pacer is not None:
                delay = pacer.delay(unit.media_time)
                if delay > 0:
                    await asyncio.sleep(delay)
            if self._session.capture_encoded(unit):
                self._metrics.published()
            if (
                not strict
                and self._session.keyframe_pending_for(self._clock()) > KEYFRAME_WAIT_LIMIT
            ):
                raise ModeSwitch(
                    f"a subscriber waited over {KEYFRAME_WAIT_LIMIT:.0f}s for the source's next "
                    "keyframe (its keyframe interval is too long for passthrough)"
                )

    async def _pump_frames(self, reader: SourceReader, info: StreamInfo) -> None:
        video = self._config.video
        width, height = scaled_size(info.width, info.height, video.max_height)
        fps = min(float(video.max_fps), info.fps or float(video.max_fps))
        self._session.request_track(TrackSpec("raw", width, height, fps))
        pacer = Pacer(self._clock)
        first = True
        async for frame in reader.frames(max_height=video.max_height, max_fps=video.max_fps):
            if first:
                self._first_frame()
                first = False
            if (frame.width, frame.height) != (width, height):
                width, height = frame.width, frame.height
                self._session.request_track(TrackSpec("raw", width, height, fps))
                # Let the session republish at the new size before feeding it.
                await asyncio.sleep(0)
            if not info.live:
                delay = pacer.delay(frame.media_time)
                if delay > 0:
                    await asyncio.sleep(delay)
            if self._session.capture_raw(frame):
                self._metrics.published()
