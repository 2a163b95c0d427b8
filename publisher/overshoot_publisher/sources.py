"""Video sources through PyAV (FFmpeg): RTSP, HTTP(S)/HLS, files and generated test patterns.

Role: open a source, describe its video stream (`StreamInfo`), and read it either as
encoded H.264 access units (`read_units`, the passthrough path: demux only, no decoder)
or as decoded, scaled, rate-capped I420 frames (`read_frames`, the transcode path).

Every PyAV call blocks, so each source lives on one worker thread of its own
(`SourceReader`): open, every read and close are queued on that thread in order, and the
event loop only awaits them. A read never outlives the read timeout given to FFmpeg, so
closing after a cancelled read waits at most that long.

Credentials never reach argv, logs or messages: RTSP userinfo is put into the URL in
memory only, HTTP(S) gets an `Authorization` header option, and FFmpeg errors are
translated here into our own messages (FFmpeg's text repeats the URL) and scrubbed.

Boundary: PyAV. Nothing else in the publisher imports `av`.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import av
import av.error

from overshoot_publisher.config import Source
from overshoot_publisher.errors import (
    ModeSwitch,
    SourceRejected,
    SourceUnavailable,
    redact_url,
    scrub,
)
from overshoot_publisher.h264 import AnnexBConverter, BitstreamError
from overshoot_publisher.mounted import Credentials
from overshoot_publisher.pacing import FpsLimiter, scaled_size

logger = logging.getLogger(__name__)

OPEN_TIMEOUT = 10.0
READ_TIMEOUT = 5.0

# lavfi sources for the config's pattern names.
_PATTERNS = {
    "smpte": "smptebars=size={w}x{h}:rate={fps}",
    "bars": "testsrc=size={w}x{h}:rate={fps}",
    "ball": "testsrc2=size={w}x{h}:rate={fps}",
    "gradient": "gradients=size={w}x{h}:rate={fps}:speed=0.05",
    "noise": "color=c=gray:size={w}x{h}:rate={fps},noise=alls=60:allf=t+u",
}

T = TypeVar("T")


@dataclass(frozen=True)
class StreamInfo:
    """What the opened video stream is, as far as the demuxer knows without decoding."""

    codec: str
    width: int
    height: int
    fps: float | None
    has_b_frames: bool
    # Frames are generated (test pattern): nothing encoded to pass through.
    generated: bool
    # Frames arrive in real time on their own (RTSP): no pacing needed.
    live: bool
    profile: str | None = None


@dataclass(frozen=True, slots=True)
class EncodedUnit:
    """One H.264 access unit in Annex B."""

    data: bytes
    keyframe: bool
    media_time: float
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One I420 picture, planes packed without padding."""

    data: bytes
    width: int
    height: int
    media_time: float


@dataclass(frozen=True)
class OpenSpec:
    """Everything `av.open` needs; `url` may hold credentials: never log it, use `label`."""

    url: str
    label: str
    format: str | None
    options: dict[str, str]
    secrets: tuple[str, ...]
    live: bool
    loop: bool
    generated: bool
    # The user's Secret with the source credentials, to name in messages.
    credentials_secret: str | None = None
    # A network source's host (looked up before opening, for a clear DNS error).
    host: str | None = None


def build_open_spec(source: Source, credentials: Credentials | None) -> OpenSpec:
    """Translate the configured source into PyAV arguments (pure)."""
    secrets: tuple[str, ...] = ()
    if credentials is not None:
        secrets = (credentials.password,)
    if source.rtsp is not None:
        label = redact_url(source.rtsp.url)
        url = label
        if credentials is not None:
            parts = urlsplit(label)
            userinfo = (
                f"{quote(credentials.username, safe='')}:{quote(credentials.password, safe='')}"
            )
            url = urlunsplit(
                (
                    parts.scheme,
                    f"{userinfo}@{parts.netloc}",
                    parts.path,
                    parts.query,
                    parts.fragment,
                )
            )
        options = {"rtsp_transport": source.rtsp.transport.lower()}
        ref = source.rtsp.credentials_secret_ref
        return OpenSpec(
            url,
            label,
            None,
            options,
            secrets,
            live=True,
            loop=False,
            generated=False,
            credentials_secret=ref.name if ref else None,
            host=urlsplit(label).hostname,
        )
    if source.url is not None:
        label = redact_url(source.url.url)
        options = {}
        if credentials is not None:
            basic = base64.b64encode(
                f"{credentials.username}:{credentials.password}".encode()
            ).decode()
            options["headers"] = f"Authorization: Basic {basic}\r\n"
            secrets = (*secrets, basic)
        # Live HLS: reconnect on HTTP hiccups instead of ending the stream.
        options["reconnect"] = "1"
        options["reconnect_streamed"] = "1"
        ref = source.url.credentials_secret_ref
        return OpenSpec(
            label,
            label,
            None,
            options,
            secrets,
            live=False,
            loop=False,
            generated=False,
            credentials_secret=ref.name if ref else None,
            host=urlsplit(label).hostname,
        )
    if source.file is not None:
        path = source.file.path
        return OpenSpec(
            path, path, None, {}, (), live=False, loop=source.file.loop, generated=False
        )
    assert source.test_pattern is not None
    pattern = source.test_pattern
    graph = _PATTERNS[pattern.pattern].format(w=pattern.width, h=pattern.height, fps=pattern.fps)
    return OpenSpec(
        graph,
        f"test pattern {pattern.pattern}",
        "lavfi",
        {},
        (),
        live=False,
        loop=False,
        generated=True,
    )


def translate_error(exc: BaseException, spec: OpenSpec, *, opening: bool) -> Exception:
    """Our error for an FFmpeg/OS error, with a message built from safe parts only."""
    where = spec.label
    strerror = scrub(str(getattr(exc, "strerror", "") or type(exc).__name__), spec.secrets)
    if isinstance(exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError):
        code = 401 if isinstance(exc, av.error.HTTPUnauthorizedError) else 403
        secret = (
            f"Secret {spec.credentials_secret!r}"
            if spec.credentials_secret
            else "spec.source credentialsSecretRef (none is set)"
        )
        return SourceRejected(
            f"Source {where} refused the credentials ({code}): check the username and "
            f"password in {secret}",
            reason="SourceUnauthorized",
        )
    if isinstance(exc, av.error.HTTPNotFoundError):
        return SourceRejected(
            f"Source {where} does not exist (404 Not Found): check the URL or path",
            reason="SourceNotFound",
        )
    if isinstance(exc, av.error.FileNotFoundError) or (
        isinstance(exc, FileNotFoundError) and not spec.live
    ):
        return SourceRejected(
            f"Source file {where} does not exist: check the path and the volume",
            reason="SourceNotFound",
        )
    if isinstance(exc, av.error.PermissionError | PermissionError):
        return SourceRejected(
            f"Source {where} is not readable (permission denied)", reason="SourceForbidden"
        )
    if isinstance(exc, av.error.HTTPClientError):
        return SourceRejected(
            f"Source {where} rejected the request: {strerror}", reason="SourceRejected"
        )
    if isinstance(exc, av.error.ExitError | av.error.TimeoutError | TimeoutError):
        if opening:
            return SourceUnavailable(
                f"Source {where} did not answer within {OPEN_TIMEOUT:.0f}s (timeout)",
                cause="timeout",
            )
        return SourceUnavailable(
            f"Source {where} sent nothing for {READ_TIMEOUT:.0f}s", cause="stall"
        )
    if isinstance(exc, av.error.ConnectionRefusedError | ConnectionRefusedError):
        return SourceUnavailable(f"Source {where} refused the connection", cause="refused")
    verb = "open" if opening else "read"
    return SourceUnavailable(f"Could not {verb} source {where}: {strerror}", cause="error")


class MediaInput:
    """An opened source. Blocking: use only from the source's own thread (`SourceReader`)."""

    def __init__(
        self,
        spec: OpenSpec,
        on_decoder_open: Callable[[], None] | None = None,
        on_read: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self._on_decoder_open = on_decoder_open
        self._on_read = on_read or (lambda: None)
        try:
            self._container: Any = av.open(
                spec.url,
                format=spec.format,
                options=spec.options,
                timeout=(OPEN_TIMEOUT, READ_TIMEOUT),
            )
        except (av.error.FFmpegError, OSError) as exc:
            raise translate_error(exc, spec, opening=True) from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceRejected(
                f"Source {spec.label} has no video stream", reason="SourceHasNoVideo"
            )
        self._stream: Any = self._container.streams.video[0]
        ctx = self._stream.codec_context
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.info = StreamInfo(
            codec=ctx.name,
            width=ctx.width,
            height=ctx.height,
            fps=float(rate) if rate else None,
            has_b_frames=bool(ctx.has_b_frames),
            generated=spec.generated,
            live=spec.live,
            profile=ctx.profile,
        )
        self._time_base: Fraction | None = self._stream.time_base
        self._duration_offset = 0.0

    def close(self) -> None:
        self._container.close()

    def _time(self, pts: int | None, fallback: float) -> float:
        # Without a timestamp (the first RTSP packet), count frames at the nominal rate.
        if pts is None or self._time_base is None:
            return fallback
        return float(pts * self._time_base) + self._duration_offset

    def _rewind(self, last_time: float, interval: float) -> None:
        """Start the file again; media time keeps increasing across the loop."""
        self._container.seek(0)
        # Media time continues one frame after the last one.
        self._duration_offset = last_time + interval

    def read_units(self, *, strict: bool) -> Iterator[EncodedUnit]:
        """Demuxed H.264 access units in Annex B; never decodes.

        Pictures in reordered (B-frame) order are detected from presentation timestamps
        going backwards: `strict` (Passthrough mode) rejects the source, otherwise a
        `ModeSwitch` asks the caller to transcode.
        """
        info = self.info
        try:
            converter = AnnexBConverter(self._stream.codec_context.extradata)
        except BitstreamError as exc:
            raise SourceRejected(
                f"Source {self.spec.label}: unreadable H.264 parameters ({exc})",
                reason="UnsupportedVideo",
            ) from None
        interval = 1.0 / (info.fps or 30.0)
        count = 0
        last_pts: int | None = None
        last_time = 0.0
        while True:
            try:
                for packet in self._container.demux(self._stream):
                    if packet.size == 0:
                        continue  # demuxer flush marker
                    self._on_read()
                    pts = packet.pts
                    if pts is not None and last_pts is not None and pts < last_pts:
                        why = (
                            f"Source {self.spec.label} has B-frames (pictures out of order), "
                            "which WebRTC cannot carry"
                        )
                        if strict:
                            raise SourceRejected(
                                why + ": set video.mode to Auto or Transcode",
                                reason="UnsupportedVideo",
                            )
                        raise ModeSwitch(why)
                    if pts is not None:
                        last_pts = pts
                    media_time = self._time(pts, count * interval)
                    try:
                        data, key = converter.convert(bytes(packet))
                    except BitstreamError as exc:
                        logger.warning("Dropped a malformed H.264 packet: %s", exc)
                        continue
                    count += 1
                    last_time = media_time
                    yield EncodedUnit(data, key, media_time, info.width, info.height)
            except (av.error.FFmpegError, OSError) as exc:
                raise translate_error(exc, self.spec, opening=False) from None
            if not self.spec.loop:
                raise SourceUnavailable(f"Source {self.spec.label} ended", cause="eof")
            self._rewind(last_time, interval)
            last_pts = None

    def read_frames(self, *, max_height: int, max_fps: float) -> Iterator[RawFrame]:
        """Decoded frames scaled to at most `max_height`, capped at `max_fps`, as I420."""
        ctx = self._stream.codec_context
        ctx.thread_type = "AUTO"
        if self._on_decoder_open is not None and not self.spec.generated:
            self._on_decoder_open()
        limiter = FpsLimiter(max_fps)
        interval = 1.0 / (self.info.fps or max_fps)
        count = 0
        last_time = 0.0
        size: tuple[int, int] | None = None
        while True:
            try:
                for frame in self._container.decode(self._stream):
                    self._on_read()
                    media_time = self._time(frame.pts, count * interval)
                    count += 1
                    last_time = media_time
                    if not limiter.admit(media_time):
                        continue
                    if size is None or frame.height != self.info.height:
                        size = scaled_size(frame.width, frame.height, max_height)
                    width, height = size
                    out = frame.reformat(
                        width=width, height=height, format="yuv420p", interpolation="BILINEAR"
                    )
                    yield RawFrame(out.to_ndarray().tobytes(), width, height, media_time)
            except (av.error.FFmpegError, OSError) as exc:
                raise translate_error(exc, self.spec, opening=False) from None
            if not self.spec.loop:
                raise SourceUnavailable(f"Source {self.spec.label} ended", cause="eof")
            self._rewind(last_time, interval)
            limiter = FpsLimiter(max_fps)


class SourceReader:
    """Runs one `MediaInput` on a thread of its own and exposes it to asyncio."""

    def __init__(
        self,
        spec: OpenSpec,
        on_decoder_open: Callable[[], None] | None = None,
        on_read: Callable[[], None] | None = None,
    ) -> None:
        """`on_decoder_open` and `on_read` are called on the source's thread."""
        self.spec = spec
        self._on_decoder_open = on_decoder_open
        self._on_read = on_read
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="source"
        )
        self._input: MediaInput | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def open(self) -> StreamInfo:
        started = time.monotonic()
        await self._resolve()
        self._input = await self._call(MediaInput, self.spec, self._on_decoder_open, self._on_read)
        logger.info(
            "Opened source %s in %.1fs: %s %dx%d at %s fps%s",
            self.spec.label,
            time.monotonic() - started,
            self._input.info.codec,
            self._input.info.width,
            self._input.info.height,
            f"{self._input.info.fps:.2f}" if self._input.info.fps else "unknown",
            ", B-frames" if self._input.info.has_b_frames else "",
        )
        return self._input.info

    async def _resolve(self) -> None:
        """A network source's host name is looked up first, so a name that does not
        resolve is told apart from a camera that does not answer (FFmpeg says "I/O error"
        for both)."""
        host = self.spec.host
        if host is None:
            return
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host.strip("[]"))
            return
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM),
                OPEN_TIMEOUT,
            )
        except socket.gaierror as exc:
            raise SourceUnavailable(
                f"Source {self.spec.label}: its host {host!r} does not resolve (DNS: "
                f"{exc.strerror})",
                cause="dns",
            ) from None
        except TimeoutError:
            raise SourceUnavailable(
                f"Source {self.spec.label}: looking up its host {host!r} took over "
                f"{OPEN_TIMEOUT:.0f}s (DNS timeout)",
                cause="dns",
            ) from None

    async def iterate(self, it: Iterator[T]) -> AsyncIterator[T]:
        """Async iteration over a blocking iterator of this source, one item per thread hop."""
        done = object()
        while True:
            item = await self._call(next, it, done)
            if item is done:
                return
            yield item

    def units(self, *, strict: bool) -> AsyncIterator[EncodedUnit]:
        assert self._input is not None
        return self.iterate(self._input.read_units(strict=strict))

    def frames(self, *, max_height: int, max_fps: float) -> AsyncIterator[RawFrame]:
        assert self._input is not None
        return self.iterate(self._input.read_frames(max_height=max_height, max_fps=max_fps))

    async def aclose(self) -> None:
        """Close the source after any read in flight (bounded by the read timeout)."""
        media, self._input = self._input, None
        if media is not None:
            # Shielded: a cancelled caller must still not leave the container open.
            await asyncio.shield(self._call(media.close))
        self._executor.shutdown(wait=False)
