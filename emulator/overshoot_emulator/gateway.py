"""The media gateway: joins each active stream's LiveKit room and counts real decoded frames.

Role: a `StreamObserver` on the store. For every created stream it joins room
`stream.room` as the hidden subscriber `overshoot-gateway` (a token minted here with
livekit-api), subscribes to video tracks, lets LiveKit's WebRTC stack decode them
(`rtc.VideoStream`), and books every decoded frame with `StreamStore.record_frames`, so the
frame fields of GET /streams/{id} come from frames that really arrived. It leaves the room
when the stream ends, and rejoins (fresh token, backoff) if the LiveKit server goes away.
It stays out of rooms of streams the emulator pulls itself: their frames are counted by the
pull (pull.py), once.

Also keeps, per stream, what tests need to check the media itself (decoded resolution,
frame count, rate) and serves it at GET /admin/gateway; never a token.

Boundary: the `livekit` SDK (imported only when a LiveKit server is configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web

from overshoot_emulator.config import LiveKitCredentials
from overshoot_emulator.store import Stream, StreamEnded, StreamNotFound, StreamStore

log = logging.getLogger(__name__)

GATEWAY_IDENTITY = "overshoot-gateway"
# Guess: Overshoot's own gateway is invisible to publishers; a hidden participant is.
TOKEN_TTL = timedelta(hours=6)


@dataclass
class TrackStats:
    """What the gateway decoded for one stream (the latest track wins)."""

    frames: int = 0
    width: int | None = None
    height: int | None = None
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    tracks: int = 0
    joins: int = 0

    def as_json(self) -> dict[str, Any]:
        body = asdict(self)
        span = (self.last_frame_at or 0) - (self.first_frame_at or 0)
        body["average_fps"] = round((self.frames - 1) / span, 2) if span > 0 else None
        return body


def _setter(event: asyncio.Event) -> Any:
    def set_event(*_: object) -> None:
        event.set()

    return set_event


# Statistics of ended streams are kept for tests to read, up to this many streams.
MAX_STATS = 1000


class MediaGateway:
    def __init__(
        self,
        store: StreamStore,
        url: str,
        credentials: LiveKitCredentials,
        *,
        retry_cap: float = 5.0,
    ) -> None:
        self._store = store
        self._url = url
        self._credentials = credentials
        self._retry_cap = retry_cap
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.stats: dict[str, TrackStats] = {}

    # --- StreamObserver -------------------------------------------------------------

    def stream_started(self, stream: Stream) -> None:
        if stream.source is not None:
            # A pulled stream's frames are booked by its pull (pull.py), which also
            # republishes them into this room as `overshoot-source`; no client holds a
            # publish token for the room, so joining would only count every frame twice.
            return
        self.stats[stream.id] = TrackStats()
        while len(self.stats) > MAX_STATS:
            del self.stats[next(iter(self.stats))]
        self._tasks[stream.id] = asyncio.get_running_loop().create_task(
            self._follow(stream.id, stream.room), name=f"gateway-{stream.id}"
        )

    def stream_ended(self, stream: Stream) -> None:
        task = self._tasks.pop(stream.id, None)
        if task is not None:
            task.cancel()

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- the room side --------------------------------------------------------------

    def _token(self, room: str) -> str:
        from livekit import api

        grants = api.VideoGrants(
            room_join=True,
            room=room,
            can_publish=False,
            can_publish_data=False,
            can_subscribe=True,
            hidden=True,
        )
        token: str = (
            api.AccessToken(self._credentials.api_key, self._credentials.api_secret)
            .with_identity(GATEWAY_IDENTITY)
            .with_grants(grants)
            .with_ttl(TOKEN_TTL)
            .to_jwt()
        )
        return token

    async def _follow(self, stream_id: str, room_name: str) -> None:
        attempt = 0
        while True:
            if await self._join_once(stream_id, room_name):
                attempt = 0
            delay = min(self._retry_cap, 0.5 * 2**attempt) * random.uniform(0.8, 1.2)
            attempt += 1
            await asyncio.sleep(delay)

    async def _join_once(self, stream_id: str, room_name: str) -> bool:
        """Stay in the room until disconnected; return whether the join succeeded."""
        from livekit import rtc

        room = rtc.Room()
        disconnected = asyncio.Event()
        counters: dict[str, asyncio.Task[None]] = {}

        def on_track(track: Any, _publication: Any, _participant: Any) -> None:
            if track.kind == rtc.TrackKind.KIND_VIDEO:
                counters[track.sid] = asyncio.create_task(
                    self._count(stream_id, track), name="gateway-frames"
                )

        def on_untrack(track: Any, _publication: Any, _participant: Any) -> None:
            # A publisher that left (replaced Pod, new room) must stop counting: a stale
            # stream would otherwise keep adding frames next to its successor's.
            task = counters.pop(track.sid, None)
            if task is not None:
                task.cancel()

        room.on("track_subscribed", on_track)
        room.on("track_unsubscribed", on_untrack)
        room.on("disconnected", _setter(disconnected))
        try:
            await room.connect(self._url, self._token(room_name), rtc.RoomOptions())
        except rtc.ConnectError as exc:
            log.warning("Could not join room %s: %s", room_name, exc.message)
            return False
        try:
            self.stats.setdefault(stream_id, TrackStats()).joins += 1
            log.info("Joined room %s as the media gateway", room_name)
            await disconnected.wait()
            log.warning("Lost room %s; rejoining", room_name)
            return True
        finally:
            for task in counters.values():
                task.cancel()
            # Shielded: leaving must finish even when the stream's task is cancelled.
            with contextlib.suppress(Exception):
                await asyncio.shield(room.disconnect())

    async def _count(self, stream_id: str, track: Any) -> None:
        from livekit import rtc

        stats = self.stats.setdefault(stream_id, TrackStats())
        stats.tracks += 1
        video = rtc.VideoStream(track)
        try:
            async for event in video:
                now = time.time()
                stats.frames += 1
                stats.width, stats.height = event.frame.width, event.frame.height
                if stats.first_frame_at is None:
                    stats.first_frame_at = now
                stats.last_frame_at = now
                try:
                    self._store.record_frames(stream_id, 1)
                except (StreamNotFound, StreamEnded):
                    return  # the stream ended while frames were in flight
        finally:
            stats.tracks -= 1  # tracks counts the ones being decoded now
            with contextlib.suppress(Exception):
                await video.aclose()


GATEWAY = web.AppKey("gateway", MediaGateway)


async def gateway_stats(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    return web.json_response({sid: s.as_json() for sid, s in gateway.stats.items()})


def add_routes(app: web.Application, gateway: MediaGateway, prefix: str = "/admin") -> None:
    """GET {prefix}/gateway: per-stream decoded-frame statistics (tests, debugging)."""
    app[GATEWAY] = gateway
    app.router.add_get(f"{prefix}/gateway", gateway_stats)
