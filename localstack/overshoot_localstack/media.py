"""Test media made on the spot (never committed): encoded clips and a live HLS source.

- `make_clip()`: PyAV encodes a test pattern into a file: H.264 with or without B-frames
  (libx264), VP8 (libvpx), at a chosen size, rate and length.
- `HlsSource`: PyAV's hls muxer writes a live playlist and segments into a temporary
  directory in real time from a thread, and `http.server` serves it on loopback.

Boundary: PyAV and a loopback HTTP server. Used by tests, the benchmark and the demo.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import shutil
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av

logger = logging.getLogger(__name__)


def _pattern(width: int, height: int, fps: int, pattern: str = "testsrc2") -> Any:
    return av.open(f"{pattern}=size={width}x{height}:rate={fps}", format="lavfi")


def make_clip(
    path: str | Path,
    *,
    codec: str = "h264",
    width: int = 640,
    height: int = 360,
    fps: int = 15,
    seconds: float = 4.0,
    bframes: int = 0,
    gop: int | None = None,
    profile: str | None = None,
    bitrate: int | None = None,
) -> Path:
    """Encode `seconds` of a moving test pattern into `path` (container from the suffix)."""
    path = Path(path)
    encoder = {"h264": "libx264", "vp8": "libvpx", "vp9": "libvpx-vp9"}.get(codec, codec)
    frames = round(seconds * fps)
    out: Any = av.open(str(path), "w")
    try:
        stream = out.add_stream(encoder, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if bitrate:
            stream.bit_rate = bitrate
        options = {"g": str(gop or 2 * fps)}
        if encoder == "libx264":
            options.update({"bf": str(bframes), "preset": "veryfast"})
            if profile:
                options["profile"] = profile
        elif encoder.startswith("libvpx"):
            options.update({"deadline": "realtime", "cpu-used": "8"})
        stream.codec_context.options = options
        src: Any = _pattern(width, height, fps)
        try:
            for index, frame in enumerate(src.decode(video=0)):
                if index >= frames:
                    break
                # lavfi marks its frames as I pictures; libx264 would honour that and make
                # every frame an IDR.
                fresh = av.VideoFrame.from_ndarray(frame.to_ndarray(format="yuv420p"), "yuv420p")
                fresh.pts = index
                fresh.time_base = Fraction(1, fps)
                for packet in stream.encode(fresh):
                    out.mux(packet)
        finally:
            src.close()
        for packet in stream.encode():
            out.mux(packet)
    finally:
        out.close()
    return path


def make_audio_clip(path: str | Path, *, seconds: float = 4.0, rate: int = 48000) -> Path:
    """A media file with a sine tone and no video at all (container from the suffix): a
    source a video publisher must refuse."""
    path = Path(path)
    out: Any = av.open(str(path), "w")
    try:
        stream = out.add_stream("mp2", rate=rate)
        src: Any = av.open(
            f"sine=frequency=440:sample_rate={rate}:duration={seconds}", format="lavfi"
        )
        try:
            for frame in src.decode(audio=0):
                frame.pts = None
                for packet in stream.encode(frame):
                    out.mux(packet)
        finally:
            src.close()
        for packet in stream.encode():
            out.mux(packet)
    finally:
        out.close()
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("HTTP media server: " + format, *args)


class FileServer:
    """Plain HTTP of one directory's files at `address` (e.g. a real node's address, for
    Pods to reach): a media URL that is not a live stream."""

    def __init__(self, directory: str | Path, *, address: str = "127.0.0.1") -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.address = address
        self._server = http.server.ThreadingHTTPServer((address, 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="media-http", daemon=True
        )

    def url(self, name: str) -> str:
        return f"http://{self.address}:{self._server.server_address[1]}/{name}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


class HlsSource:
    """A live HLS stream of a test pattern at `url`, served from `address` (127.0.0.1, or a
    real node's address for Pods to reach)."""

    def __init__(
        self,
        *,
        address: str = "127.0.0.1",
        width: int = 640,
        height: int = 360,
        fps: int = 15,
        segment_seconds: float = 1.0,
        bframes: int = 0,
    ) -> None:
        self.address = address
        self.width, self.height, self.fps = width, height, fps
        self.segment_seconds = segment_seconds
        self.bframes = bframes
        self._dir = Path(tempfile.mkdtemp(prefix="overshoot-hls-"))
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._server: http.server.ThreadingHTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def playlist(self) -> Path:
        return self._dir / "live.m3u8"

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{self.address}:{self._server.server_address[1]}/live.m3u8"

    def start(self, timeout: float = 20.0) -> None:
        handler = functools.partial(_QuietHandler, directory=str(self._dir))
        self._server = http.server.ThreadingHTTPServer((self.address, 0), handler)
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, name="hls-http", daemon=True
        )
        self._serve_thread.start()
        self._writer = threading.Thread(target=self._write, name="hls-writer", daemon=True)
        self._writer.start()
        # A player needs a few segments in the playlist before it starts.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise RuntimeError(f"The HLS writer failed: {self.error!r}")
            if self.playlist.exists() and self.playlist.read_text().count("#EXTINF") >= 2:
                return
            time.sleep(0.1)
        raise RuntimeError(f"The HLS writer made no playlist in {timeout}s")

    def _write(self) -> None:
        try:
            out: Any = av.open(
                str(self.playlist),
                "w",
                format="hls",
                options={
                    "hls_time": str(self.segment_seconds),
                    "hls_list_size": "6",
                    "hls_flags": "delete_segments+independent_segments",
                },
            )
            stream = out.add_stream("libx264", rate=self.fps)
            stream.width, stream.height = self.width, self.height
            stream.pix_fmt = "yuv420p"
            gop = max(1, round(self.fps * self.segment_seconds))
            stream.codec_context.options = {
                "g": str(gop),
                "keyint_min": str(gop),
                "sc_threshold": "0",
                "bf": str(self.bframes),
                "preset": "veryfast",
                "tune": "zerolatency",
            }
            src: Any = _pattern(self.width, self.height, self.fps)
            started = time.monotonic()
            try:
                for index, frame in enumerate(src.decode(video=0)):
                    if self._stop.is_set():
                        break
                    # Real time: frame `index` is written at its own instant.
                    delay = started + index / self.fps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    fresh = av.VideoFrame.from_ndarray(
                        frame.to_ndarray(format="yuv420p"), "yuv420p"
                    )
                    fresh.pts = index
                    fresh.time_base = Fraction(1, self.fps)
                    for packet in stream.encode(fresh):
                        out.mux(packet)
            finally:
                src.close()
                with contextlib.suppress(Exception):
                    for packet in stream.encode():
                        out.mux(packet)
                out.close()
        except BaseException as exc:  # reported by start() and by tests
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=10)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> HlsSource:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
