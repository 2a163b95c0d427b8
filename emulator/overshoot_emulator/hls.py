"""HLS sources: playlists and segments fetched on the event loop, frames played out in time.

Role: one HLS connection of a pull (pull.py), `read_hls`: fetch the playlist (following a
multivariant playlist to its first variant), fetch each new media segment, decode it on the
session's own thread (decode.py) and emit its frames at their media rate, reload a live
playlist as RFC 8216 asks, and finish with ENDED once a playlist with `#EXT-X-ENDLIST` is
played out, or DROPPED on an HTTP or playlist error.

Why not FFmpeg's own HLS demuxer: it can only be interrupted by PyAV's read timeout, and a
timeout short enough to stop a pull within a second breaks its playlist reloads (it reports
EOF and never recovers); over aiohttp every wait is cancellable at once, and a source that
ended (ENDLIST) is told apart from one that failed.

Every URL fetched (playlist, variant, segment, redirect target) is checked against the
address policy first, unless private sources are allowed.

Boundary: aiohttp (a client session owned by pull.py) and the playlist text format.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp

from overshoot_emulator.decode import Emit, Outcome, Picture, decode_frames, describe_error
from overshoot_emulator.sources import redacted_host

log = logging.getLogger(__name__)

# Guess: where Overshoot joins a live playlist is undocumented; three segments from its end,
# like FFmpeg's `live_start_index -3` (and most players).
LIVE_START_SEGMENTS = 3
MAX_PLAYLIST_BYTES = 1 << 20
MAX_SEGMENT_BYTES = 64 << 20
MAX_REDIRECTS = 5
# Guess: how long Overshoot waits on a silent HTTP read is undocumented.
READ_TIMEOUT = 10.0

_URI = re.compile(r'URI="([^"]*)"')
_METHOD = re.compile(r"METHOD=([A-Z0-9-]+)")

# Whether a URL may be fetched (the address policy); None allows every address.
UrlCheck = Callable[[str], Awaitable[bool]]


class PlaylistError(ValueError):
    """A playlist this reader cannot play; the message never holds a URL."""


@dataclass(frozen=True, slots=True)
class Segment:
    sequence: int
    uri: str
    duration: float
    init_uri: str | None = None


@dataclass(frozen=True, slots=True)
class MediaPlaylist:
    target_duration: float
    segments: tuple[Segment, ...]
    ended: bool


@dataclass(frozen=True, slots=True)
class MultivariantPlaylist:
    variants: tuple[str, ...]


def parse_playlist(text: str, base_url: str) -> MediaPlaylist | MultivariantPlaylist:
    """Parse an M3U8 playlist; relative URIs are resolved against `base_url`."""
    lines = [line.strip() for line in text.splitlines()]
    if not lines or lines[0].lstrip("\ufeff") != "#EXTM3U":
        raise PlaylistError("not an M3U8 playlist")
    variants: list[str] = []
    segments: list[Segment] = []
    sequence = 0
    target: float | None = None
    ended = False
    duration: float | None = None
    init_uri: str | None = None
    variant_next = False
    try:
        for line in lines[1:]:
            if not line:
                continue
            if line.startswith("#EXT-X-STREAM-INF"):
                variant_next = True
            elif line.startswith("#EXT-X-TARGETDURATION:"):
                target = float(line.partition(":")[2])
            elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
                sequence = int(line.partition(":")[2])
            elif line.startswith("#EXTINF:"):
                duration = float(line.partition(":")[2].split(",", 1)[0])
            elif line == "#EXT-X-ENDLIST":
                ended = True
            elif line.startswith("#EXT-X-MAP:"):
                uri = _URI.search(line)
                init_uri = urljoin(base_url, uri.group(1)) if uri else None
            elif line.startswith("#EXT-X-KEY:"):
                method = _METHOD.search(line)
                if method is not None and method.group(1) != "NONE":
                    raise PlaylistError("encrypted segments are not supported")
            elif line.startswith("#"):
                continue
            elif variant_next:
                variants.append(urljoin(base_url, line))
                variant_next = False
            else:
                segment_duration = duration if duration is not None else (target or 0.0)
                segments.append(
                    Segment(
                        sequence + len(segments),
                        urljoin(base_url, line),
                        segment_duration,
                        init_uri,
                    )
                )
                duration = None
    except ValueError as exc:
        if isinstance(exc, PlaylistError):
            raise
        raise PlaylistError("malformed playlist tag") from None
    if variants:
        return MultivariantPlaylist(tuple(variants))
    if target is None:
        raise PlaylistError("media playlist without #EXT-X-TARGETDURATION")
    return MediaPlaylist(target, tuple(segments), ended)


def first_to_play(playlist: MediaPlaylist) -> int | None:
    """The sequence number to start at: the start of a finished playlist, near the live edge
    of a live one."""
    if not playlist.segments:
        return None
    start = 0 if playlist.ended else max(0, len(playlist.segments) - LIVE_START_SEGMENTS)
    return playlist.segments[start].sequence


def reload_delay(playlist: MediaPlaylist, had_new_segments: bool) -> float:
    """RFC 8216 6.3.4: wait a target duration after a reload that brought new segments,
    half of one after a reload that did not (both counted from the start of the load)."""
    return playlist.target_duration if had_new_segments else playlist.target_duration / 2


class Pacer:
    """Plays frames out at their media times, anchored to the clock at the first frame.

    Guess: Overshoot's ingest rate for HLS is undocumented; a player's (the media rate),
    not per-segment bursts, so `recent_fps` and the republished video look like the source.

    Re-anchors on a jump (a discontinuity, timestamps going back) or when more than a
    second behind, so one late segment never makes the following frames burst.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._anchor: tuple[float, float] | None = None  # (clock, media time)
        self._last: float | None = None

    def delay(self, media_time: float) -> float:
        """Seconds to wait before emitting the frame at `media_time` (seconds)."""
        now = self._clock()
        previous, self._last = self._last, media_time
        if self._anchor is None or previous is None or media_time < previous:
            self._anchor = (now, media_time)
            return 0.0
        due = self._anchor[0] + (media_time - self._anchor[1])
        if due < now - 1.0 or due > now + 10.0:
            self._anchor = (now, media_time)
            return 0.0
        return max(0.0, due - now)


class _Http:
    """GETs with the address policy applied to every URL, redirects included."""

    def __init__(self, http: aiohttp.ClientSession, check: UrlCheck | None, open_timeout: float):
        self._http = http
        self._check = check
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=max(open_timeout, 0.1), sock_read=READ_TIMEOUT
        )

    async def get(self, url: str, limit: int) -> tuple[str, bytes]:
        """(final URL, body). Raises aiohttp.ClientError, TimeoutError or PlaylistError."""
        for _ in range(MAX_REDIRECTS + 1):
            if self._check is not None and not await self._check(url):
                raise PlaylistError(f"{redacted_host(url)} does not resolve to a public address")
            async with self._http.get(
                url, allow_redirects=False, timeout=self._timeout
            ) as response:
                if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status >= 400:
                    raise PlaylistError(f"HTTP {response.status} from {redacted_host(url)}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > limit:
                        raise PlaylistError(f"a response from {redacted_host(url)} is too large")
                return url, bytes(body)
        raise PlaylistError(f"too many redirects from {redacted_host(url)}")


async def _media_playlist(http: _Http, url: str) -> tuple[str, MediaPlaylist]:
    url, body = await http.get(url, MAX_PLAYLIST_BYTES)
    playlist = parse_playlist(body.decode("utf-8", "replace"), url)
    if isinstance(playlist, MultivariantPlaylist):
        # Guess: which variant Overshoot pulls is undocumented; the first listed one.
        url, body = await http.get(playlist.variants[0], MAX_PLAYLIST_BYTES)
        playlist = parse_playlist(body.decode("utf-8", "replace"), url)
        if isinstance(playlist, MultivariantPlaylist):
            raise PlaylistError("a variant of a multivariant playlist is itself multivariant")
    return url, playlist


def _next_frame(
    frames: Generator[tuple[float, Picture | None], None, None],
) -> tuple[float, Picture | None] | None:
    return next(frames, None)


async def read_hls(
    http_session: aiohttp.ClientSession,
    url: str,
    *,
    label: str,
    open_timeout: float,
    check: UrlCheck | None,
    emit: Emit,
    pictures: bool,
) -> Outcome:
    """Play the HLS source at `url` until it ends or fails; cancel to stop."""
    loop = asyncio.get_running_loop()
    http = _Http(http_session, check, open_timeout)
    # One decoder thread per connection: PyAV objects stay on the thread that made them.
    decoder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hls-decode")
    try:
        loaded_at = loop.time()
        playlist_url, playlist = await _media_playlist(http, url)
        pacer = Pacer()
        next_sequence = first_to_play(playlist)
        init_segments: dict[str, bytes] = {}
        while True:
            if next_sequence is None:
                next_sequence = first_to_play(playlist)
            fresh = [
                s
                for s in playlist.segments
                if next_sequence is not None and s.sequence >= next_sequence
            ]
            for segment in fresh:
                init = b""
                if segment.init_uri is not None:
                    if segment.init_uri not in init_segments:
                        init_segments[segment.init_uri] = (
                            await http.get(segment.init_uri, MAX_SEGMENT_BYTES)
                        )[1]
                    init = init_segments[segment.init_uri]
                _, data = await http.get(segment.uri, MAX_SEGMENT_BYTES)
                frames = decode_frames(init + data, pictures=pictures)
                try:
                    while item := await loop.run_in_executor(decoder, _next_frame, frames):
                        media_time, picture = item
                        await asyncio.sleep(pacer.delay(media_time))
                        emit(picture)
                except ValueError as exc:
                    log.info("Skipped a segment of HLS source %s: %s", label, exc)
                finally:
                    decoder.submit(frames.close)
                next_sequence = segment.sequence + 1
            if playlist.ended and (
                next_sequence is None or next_sequence > playlist.segments[-1].sequence
            ):
                return Outcome.ENDED
            await asyncio.sleep(
                max(0.0, loaded_at + reload_delay(playlist, bool(fresh)) - loop.time())
            )
            loaded_at = loop.time()
            playlist_url, body = await http.get(playlist_url, MAX_PLAYLIST_BYTES)
            reloaded = parse_playlist(body.decode("utf-8", "replace"), playlist_url)
            if isinstance(reloaded, MultivariantPlaylist):
                raise PlaylistError("a media playlist turned multivariant")
            playlist = reloaded
    except PlaylistError as exc:
        log.info("Lost HLS source %s: %s", label, exc)
        return Outcome.DROPPED
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.info("Lost HLS source %s: %s", label, describe_error(exc))
        return Outcome.DROPPED
    finally:
        decoder.shutdown(wait=False)
