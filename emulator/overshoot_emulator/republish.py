"""The pulled camera, republished into its stream's LiveKit room.

Role: documented, "the pulled video is republished into the stream's LiveKit room". For
each pulled stream (with a LiveKit server configured) a `LiveKitRepublisher` joins room
`stream.room` as participant `overshoot-source` and publishes one video track from raw
I420 frames (`rtc.VideoSource` + `capture_frame`; LiveKit encodes VP8, no simulcast), so a
viewer (a viewer token) sees the camera. It joins when the first picture arrives (the
track's size comes from it), rejoins with a fresh token and backoff if the server goes
away, and leaves when the pull stops.

The media gateway does not join rooms of pulled streams (see gateway.py), so these frames
are counted once, by the pull.

Boundary: the `livekit` SDK (imported only when a LiveKit server is configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from overshoot_emulator.config import LiveKitCredentials
from overshoot_emulator.decode import Picture
from overshoot_emulator.store import Stream
from overshoot_emulator.tokens import SOURCE_IDENTITY, source_token

log = logging.getLogger(__name__)

TRACK_NAME = "camera"


class LiveKitRepublisher:
    """Publishes one pulled stream's pictures into its room; `push` from the event loop."""

    def __init__(
        self,
        url: str,
        credentials: LiveKitCredentials,
        stream: Stream,
        *,
        retry_cap: float = 5.0,
    ) -> None:
        self._url = url
        self._credentials = credentials
        self._stream_id = stream.id
        self._room = stream.room
        self._retry_cap = retry_cap
        self._size: tuple[int, int] | None = None
        self._first_picture = asyncio.Event()
        self._source: Any = None  # rtc.VideoSource while a track is published
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._follow(), name=f"republish-{self._stream_id}"
        )

    def push(self, picture: Picture) -> None:
        if self._size is None:
            self._size = (picture.width, picture.height)
            self._first_picture.set()
        source = self._source
        if source is None:
            return  # not in the room (yet, or right now): the picture is dropped, as live
        from livekit import rtc

        frame = rtc.VideoFrame(
            picture.width, picture.height, rtc.VideoBufferType.I420, picture.data
        )
        source.capture_frame(frame, timestamp_us=time.monotonic_ns() // 1000)
        self.published += 1

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self) -> None:
        await self._first_picture.wait()
        attempt = 0
        while True:
            if await self._publish_once():
                attempt = 0
            delay = min(self._retry_cap, 0.5 * 2**attempt) * random.uniform(0.8, 1.2)
            attempt += 1
            await asyncio.sleep(delay)

    async def _publish_once(self) -> bool:
        """Join, publish, stay until disconnected; return whether the join succeeded."""
        from livekit import rtc

        assert self._size is not None
        room = rtc.Room()
        disconnected = asyncio.Event()

        def on_disconnected(*_: object) -> None:
            disconnected.set()

        room.on("disconnected", on_disconnected)
        token = source_token(self._credentials, self._stream_id)
        try:
            await room.connect(self._url, token, rtc.RoomOptions(auto_subscribe=False))
        except rtc.ConnectError as exc:
            log.warning(
                "Could not join room %s as %s: %s", self._room, SOURCE_IDENTITY, exc.message
            )
            return False
        source = None
        try:
            width, height = self._size
            source = rtc.VideoSource(width, height)
            track = rtc.LocalVideoTrack.create_video_track(TRACK_NAME, source)
            options = rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA,
                simulcast=False,
                video_codec=rtc.VideoCodec.VP8,
            )
            await room.local_participant.publish_track(track, options)
            self._source = source
            log.info(
                "Republished stream %s into room %s as %s",
                self._stream_id,
                self._room,
                SOURCE_IDENTITY,
            )
            await disconnected.wait()
            log.warning("Lost room %s; republishing again", self._room)
            return True
        finally:
            self._source = None
            # Shielded: leaving must finish even when the pull's end cancels us.
            with contextlib.suppress(Exception):
                await asyncio.shield(room.disconnect())
            if source is not None:
                with contextlib.suppress(Exception):
                    await source.aclose()
