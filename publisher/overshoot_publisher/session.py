"""The LiveKit side: one room connection at a time, one video track, kept alive forever.

Role:
- Connect with the url/token read from the mounted publish Secret, and publish the track
  the media loop asks for (`request_track`): pre-encoded H.264 for passthrough, raw I420
  (LiveKit encodes VP8) for transcode.
- On disconnect (server restart, network loss, the SDK giving up its own resume), connect
  again with the NEWEST token in the files, with backoff and jitter, forever: the kubelet
  delivers a rotated Secret late (a minute or more), and an old token may have been
  revoked meanwhile.
- Watch the mounted stream id: when the operator recreated the remote stream, leave the
  old room and join the new one.
- Leave the room gracefully on shutdown.

Keyframes in passthrough: a camera cannot make a keyframe on demand, so a subscriber's
request (`take_feedback()`) is counted and remembered (`keyframe_pending_for`); the
subscriber gets the source's next IDR. Delta frames are held back after every (re)publish
until an IDR, so nobody starts mid-GOP. media.py decides whether a long wait means
falling back to transcode.

Boundary: the `livekit.rtc` SDK. Tokens are passed to the SDK only; messages are scrubbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from livekit import rtc

from overshoot_publisher.errors import ConfigurationError, scrub
from overshoot_publisher.metrics import Metrics
from overshoot_publisher.mounted import PublishTarget, read_publish_target, watch_stream_id
from overshoot_publisher.sources import EncodedUnit, RawFrame

logger = logging.getLogger(__name__)

TRACK_NAME = "video"
# Keyframe requests are polled this often, not per frame: nothing can act on them sooner
# (the next IDR comes when the camera sends it), and each poll is a round trip to the SDK.
FEEDBACK_INTERVAL = 0.25
# Bounds on the SDK's own round trips: a server that stopped answering must not hold the
# session (a new room to join, a shutdown) behind an unpublish or a leave.
PUBLISH_TIMEOUT = 15.0
LEAVE_TIMEOUT = 5.0


@dataclass(frozen=True)
class TrackSpec:
    """The track the media loop feeds: its kind and nominal size and rate."""

    kind: Literal["encoded", "raw"]
    width: int
    height: int
    fps: float


class Backoff:
    """Exponential backoff with jitter; `reset()` after a success."""

    def __init__(self, initial: float = 0.5, cap: float = 10.0, jitter: float = 0.2) -> None:
        self.initial, self.cap, self.jitter = initial, cap, jitter
        self.attempt = 0

    def next_delay(self) -> float:
        base: float = min(self.cap, self.initial * 2.0**self.attempt)
        self.attempt += 1
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        self.attempt = 0


def _max_bitrate(height: int) -> int:
    # Enough for a clean picture of a mostly static camera scene at these sizes.
    if height <= 360:
        return 800_000
    if height <= 540:
        return 1_200_000
    if height <= 720:
        return 2_500_000
    return 4_000_000


def _setter(event: asyncio.Event) -> Callable[..., None]:
    def set_event(*_: object) -> None:
        event.set()

    return set_event


# Why a room ended without us asking: the connection is gone, leave without ceremony.
_LOST = ("disconnected", "reconnect_timeout")

# How long the SDK may try to resume on its own before the session takes over. The SDK
# retries with the token it holds (the original or one the server refreshed); after a
# server restart with new keys, or with an expired token, those attempts never succeed,
# while the mounted Secret may already hold a fresh one.
TAKEOVER_AFTER = 10.0


class _RoomWatch:
    """The room's `disconnected` event, and `takeover` once a resume has run too long."""

    def __init__(self, room: Any, takeover_after: float) -> None:
        self.disconnected = asyncio.Event()
        self.takeover = asyncio.Event()
        self._after = takeover_after
        self._timer: asyncio.TimerHandle | None = None
        room.on("disconnected", _setter(self.disconnected))
        room.on("reconnecting", self._reconnecting)
        room.on("reconnected", self._reconnected)

    def _reconnecting(self, *_: object) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._after, self.takeover.set)

    def _reconnected(self, *_: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self._reconnected()


class _Published:
    """A published track and its source."""

    def __init__(self, spec: TrackSpec, source: Any, track: Any, sid: str) -> None:
        self.spec = spec
        self.source = source
        self.track = track
        self.sid = sid
        self.awaiting_keyframe = spec.kind == "encoded"


class Session:
    def __init__(
        self,
        secret_dir: str | Path,
        metrics: Metrics,
        *,
        connect_timeout: float = 10.0,
        watch_interval: float = 1.0,
        backoff: Backoff | None = None,
        takeover_after: float = TAKEOVER_AFTER,
    ) -> None:
        self._secret_dir = secret_dir
        self._takeover_after = takeover_after
        self._metrics = metrics
        self._connect_timeout = connect_timeout
        self._watch_interval = watch_interval
        self._backoff = backoff or Backoff()
        self._room: rtc.Room | None = None
        self._published: _Published | None = None
        self._wanted: TrackSpec | None = None
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._keyframe_pending_since: float | None = None
        self._feedback_at = 0.0
        self.connections = 0

    # -- the media loop's side -------------------------------------------------------------

    def request_track(self, spec: TrackSpec | None) -> None:
        """Ask for this track to be published (None: none); applied by the session loop."""
        if spec != self._wanted:
            self._wanted = spec
            self._wake.set()

    def await_keyframe(self) -> None:
        """Hold delta frames until the next IDR (the source restarted mid-stream)."""
        if self._published is not None and self._published.spec.kind == "encoded":
            self._published.awaiting_keyframe = True

    def keyframe_pending_for(self, now: float) -> float:
        """Seconds since a subscriber asked for a keyframe that has not come yet."""
        since = self._keyframe_pending_since
        return 0.0 if since is None else now - since

    def capture_encoded(self, unit: EncodedUnit) -> bool:
        pub = self._published
        if pub is None or pub.spec.kind != "encoded":
            self._metrics.frames_dropped.labels("not_published").inc()
            return False
        if pub.awaiting_keyframe:
            if not unit.keyframe:
                self._metrics.frames_dropped.labels("awaiting_keyframe").inc()
                return False
            pub.awaiting_keyframe = False
        frame = rtc.EncodedVideoFrame(
            data=unit.data,
            width=unit.width,
            height=unit.height,
            codec=rtc.VideoCodec.H264,
            frame_type=(
                rtc.EncodedFrameType.ENCODED_FRAME_KEY
                if unit.keyframe
                else rtc.EncodedFrameType.ENCODED_FRAME_DELTA
            ),
            timestamp_us=time.monotonic_ns() // 1000,
        )
        accepted = bool(pub.source.capture_frame(frame))
        now = time.monotonic()
        if unit.keyframe:
            self._keyframe_pending_since = None
        if now - self._feedback_at < FEEDBACK_INTERVAL:
            return self._accepted(accepted)
        self._feedback_at = now
        feedback = pub.source.take_feedback()
        if feedback.keyframe_requested:
            self._metrics.keyframe_requests.inc()
            if self._keyframe_pending_since is None and not unit.keyframe:
                self._keyframe_pending_since = now
        return self._accepted(accepted)

    def _accepted(self, accepted: bool) -> bool:
        if not accepted:
            self._metrics.frames_dropped.labels("rejected").inc()
        return accepted

    def capture_raw(self, frame: RawFrame) -> bool:
        pub = self._published
        if pub is None or pub.spec.kind != "raw":
            self._metrics.frames_dropped.labels("not_published").inc()
            return False
        if (frame.width, frame.height) != (pub.spec.width, pub.spec.height):
            # The media loop asks for a new spec first; a frame of the old size is dropped.
            self._metrics.frames_dropped.labels("size_mismatch").inc()
            return False
        video = rtc.VideoFrame(frame.width, frame.height, rtc.VideoBufferType.I420, frame.data)
        pub.source.capture_frame(video, timestamp_us=time.monotonic_ns() // 1000)
        return True

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="livekit-session")

    async def aclose(self) -> None:
        """Leave the room gracefully and stop reconnecting."""
        self._closing.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)

    async def _run(self) -> None:
        cause: str | None = None
        while not self._closing.is_set():
            try:
                target = await asyncio.to_thread(read_publish_target, self._secret_dir)
            except ConfigurationError as exc:
                logger.warning("Could not read the publish Secret: %s", exc)
                await self._sleep(self._backoff.next_delay())
                continue
            if target is None:
                await self._standby()
                continue
            room = rtc.Room()
            watch = _RoomWatch(room, self._takeover_after)
            try:
                await room.connect(
                    target.url,
                    target.token,
                    rtc.RoomOptions(auto_subscribe=False, connect_timeout=self._connect_timeout),
                )
            except rtc.ConnectError as exc:
                delay = self._backoff.next_delay()
                logger.warning(
                    "Could not connect to LiveKit at %s for stream %s (attempt %d, next in %.1fs): %s",
                    target.url,
                    target.stream_id,
                    self._backoff.attempt,
                    delay,
                    scrub(exc.message, [target.token]),
                )
                with contextlib.suppress(Exception):
                    await room.disconnect()
                await self._sleep(delay)
                continue
            if cause is not None:
                self._metrics.reconnects.labels("livekit", cause).inc()
            self.connections += 1
            self._backoff.reset()
            self._room = room
            self._metrics.state.stream_id = target.stream_id
            logger.info("Joined room %s for stream %s", room.name, target.stream_id)
            cause = await self._serve(room, target, watch)
            watch.close()
            await self._leave(room, graceful=cause not in _LOST)
            self._room = None
            if cause in _LOST and not self._closing.is_set():
                logger.warning(
                    "Lost the LiveKit connection for stream %s (%s); reconnecting with the "
                    "mounted token",
                    target.stream_id,
                    cause,
                )
                await self._sleep(self._backoff.next_delay())

    async def _standby(self) -> None:
        """No stream to publish into (the operator released it: no frame ever reached
        Overshoot). Keep the source going, so readiness says whether it delivers, and wait
        for the operator to name a stream (or for shutdown)."""
        self._metrics.state.standby = True
        self._metrics.state.stream_id = None
        logger.info(
            "No remote stream to publish into (the operator holds none until the source "
            "delivers); waiting for one"
        )
        named = asyncio.Event()
        watcher = asyncio.create_task(
            watch_stream_id(self._secret_dir, "", named, interval=self._watch_interval),
            name="watch-stream-id",
        )
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({watcher, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watcher, closing):
                task.cancel()
            await asyncio.gather(watcher, closing, return_exceptions=True)
            self._metrics.state.standby = False

    async def _serve(self, room: rtc.Room, target: PublishTarget, watch: _RoomWatch) -> str:
        """Keep the wanted track published until the room ends; return why it ended."""
        stream_changed = asyncio.Event()
        watcher = asyncio.create_task(
            watch_stream_id(
                self._secret_dir, target.stream_id, stream_changed, interval=self._watch_interval
            ),
            name="watch-stream-id",
        )
        waits = {
            "closing": self._closing,
            "disconnected": watch.disconnected,
            "reconnect_timeout": watch.takeover,
            "stream_id_changed": stream_changed,
            "wake": self._wake,
        }
        try:
            while True:
                self._wake.clear()
                if not watch.disconnected.is_set():
                    await self._apply_wanted(room)
                tasks = {asyncio.ensure_future(ev.wait()): name for name, ev in waits.items()}
                done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                fired = {tasks[t] for t in done}
                for name in ("closing", "disconnected", "reconnect_timeout", "stream_id_changed"):
                    if name in fired:
                        if name == "stream_id_changed":
                            logger.info(
                                "Stream id changed from %s; leaving its room", target.stream_id
                            )
                        return name
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _apply_wanted(self, room: rtc.Room) -> None:
        wanted = self._wanted
        current = self._published
        if current is not None and (wanted is None or current.spec != wanted):
            await self._unpublish(room)
        if wanted is not None and self._published is None:
            try:
                self._published = await self._publish(room, wanted)
            except Exception as exc:  # the SDK raises plain exceptions here
                logger.warning("Could not publish the video track: %s", exc)
                return
            self._metrics.set_track_published(True)
            logger.info(
                "Published %s video track %dx%d at %.0f fps",
                "pre-encoded H.264" if wanted.kind == "encoded" else "VP8",
                wanted.width,
                wanted.height,
                wanted.fps,
            )

    async def _publish(self, room: rtc.Room, spec: TrackSpec) -> _Published:
        encoding = rtc.VideoEncoding(max_bitrate=_max_bitrate(spec.height), max_framerate=spec.fps)
        source: Any
        if spec.kind == "encoded":
            source = rtc.EncodedVideoSource(spec.width, spec.height)
            options = rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA,
                simulcast=False,
                video_codec=rtc.VideoCodec.H264,
                video_encoder=rtc.VideoEncoderBackend.ENCODER_BACKEND_PRE_ENCODED,
                video_encoding=encoding,
            )
        else:
            source = rtc.VideoSource(spec.width, spec.height)
            options = rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA,
                simulcast=False,
                video_codec=rtc.VideoCodec.VP8,
                video_encoding=encoding,
            )
        track = rtc.LocalVideoTrack.create_video_track(TRACK_NAME, source)
        publication = await asyncio.wait_for(
            room.local_participant.publish_track(track, options), PUBLISH_TIMEOUT
        )
        self._keyframe_pending_since = None
        return _Published(spec, source, track, publication.sid)

    async def _unpublish(self, room: rtc.Room | None) -> None:
        pub, self._published = self._published, None
        self._metrics.set_track_published(False)
        if pub is None:
            return
        if room is not None and room.isconnected():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    room.local_participant.unpublish_track(pub.sid), LEAVE_TIMEOUT
                )
        with contextlib.suppress(Exception):
            await pub.source.aclose()

    async def _leave(self, room: rtc.Room, *, graceful: bool) -> None:
        await self._unpublish(room if graceful else None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(room.disconnect(), LEAVE_TIMEOUT)
        if graceful:
            logger.info("Left room %s", room.name)
