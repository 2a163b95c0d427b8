"""One picture from a stream's LiveKit room: join subscribe-only, take the first frame.

Role: join the room with a viewer token (subscribe-only; nothing is published), subscribe
to the first video track that is or becomes published, let LiveKit's WebRTC stack decode
it (`rtc.VideoStream`), convert the first decoded frame to RGB with the SDK's own
conversion, and leave. Everything joined or opened is closed in `finally`, whatever
happened; every wait is bounded by the time it is given.

Errors: `RoomProblem` (the room could not be joined, or closed), `NoVideoTrack` (nobody
published video in time), `NoFrameDecoded` (a track, but no decoded frame in time). The
token is never put in a message; LiveKit's own error text is passed through the caller's
redactor by `__main__` like every other line.

Boundary: the `livekit` SDK (rtc) and numpy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import numpy as np
from livekit import rtc
from pydantic import SecretStr

from overshoot_kubectl.errors import NoFrameDecoded, NoVideoTrack, RoomProblem
from overshoot_kubectl.jpeg import RgbImage

__all__ = ["first_frame", "frame_to_rgb"]


def frame_to_rgb(frame: rtc.VideoFrame) -> RgbImage:
    """The frame as an RGB array, converted by the SDK. Decoders hand over I420, which
    converts directly; the SDK has no direct path from some types (RGBA), so those go
    through I420 first."""
    if frame.type == rtc.VideoBufferType.RGB24:
        rgb = frame
    else:
        try:
            rgb = frame.convert(rtc.VideoBufferType.RGB24)
        except Exception:  # the SDK raises a bare Exception for an unsupported conversion
            rgb = frame.convert(rtc.VideoBufferType.I420).convert(rtc.VideoBufferType.RGB24)
    # Copied out of the SDK's buffer, which is released with the frame.
    pixels = np.frombuffer(rgb.data, dtype=np.uint8, count=rgb.width * rgb.height * 3)
    return pixels.reshape(rgb.height, rgb.width, 3).copy()


async def first_frame(url: str, token: SecretStr, *, limit: float) -> RgbImage:
    """The first decoded frame of the first video track in the room at `url`."""
    started = time.monotonic()

    def left() -> float:
        return max(0.0, limit - (time.monotonic() - started))

    loop = asyncio.get_running_loop()
    room = rtc.Room(loop)
    track: asyncio.Future[rtc.RemoteVideoTrack] = loop.create_future()
    requested: list[rtc.RemoteTrackPublication] = []
    video: rtc.VideoStream | None = None

    def subscribe(publication: rtc.RemoteTrackPublication) -> None:
        # The first video track only: a room may hold several (a replaced publisher).
        if publication.kind == rtc.TrackKind.KIND_VIDEO and not requested:
            requested.append(publication)
            publication.set_subscribed(True)

    def on_published(publication: rtc.RemoteTrackPublication, _participant: Any) -> None:
        subscribe(publication)

    def on_subscribed(subscribed: rtc.Track, _publication: Any, _participant: Any) -> None:
        if isinstance(subscribed, rtc.RemoteVideoTrack) and not track.done():
            track.set_result(subscribed)

    def on_failed(_participant: Any, _sid: str, error: str) -> None:
        if not track.done():
            track.set_exception(RoomProblem(f"subscribing to the video track failed: {error}"))

    def on_disconnected(reason: Any) -> None:
        if not track.done():
            track.set_exception(RoomProblem("the room closed before a video track appeared"))

    room.on("track_published", on_published)
    room.on("track_subscribed", on_subscribed)
    room.on("track_subscription_failed", on_failed)
    room.on("disconnected", on_disconnected)
    try:
        try:
            await asyncio.wait_for(
                room.connect(url, token.get_secret_value(), rtc.RoomOptions(auto_subscribe=False)),
                left(),
            )
        except rtc.ConnectError as err:
            raise RoomProblem(f"could not join the room at {url}: {err.message}") from None
        except TimeoutError:
            raise RoomProblem(f"could not join the room at {url} within {limit:.0f} s") from None
        # Tracks published before we joined raise no event: look at them first.
        for participant in room.remote_participants.values():
            for publication in participant.track_publications.values():
                subscribe(publication)
        try:
            subscribed = await asyncio.wait_for(asyncio.shield(track), left())
        except TimeoutError:
            raise NoVideoTrack(limit) from None
        video = rtc.VideoStream(subscribed)
        try:
            event = await asyncio.wait_for(anext(aiter(video)), left())
        except (TimeoutError, StopAsyncIteration):
            raise NoFrameDecoded(limit) from None
        return frame_to_rgb(event.frame)
    finally:
        if not track.done():
            track.cancel()
        elif not track.cancelled():
            track.exception()  # retrieved: no "exception was never retrieved" at exit
        # Shielded: leaving must finish even when this task is being cancelled.
        if video is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(video.aclose())
        with contextlib.suppress(Exception):
            await asyncio.shield(room.disconnect())
