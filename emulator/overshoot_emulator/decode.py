"""PyAV on the emulator's side: read an RTSP camera, decode HLS segments, repack pictures.

Role: the blocking media work behind a pull (pull.py), in plain functions that run on a
thread of their own and report each decoded video frame through an `emit` callback:
- `read_rtsp`: one RTSP connection (over TCP), from open to its end, a drop, or a stop;
- `decode_frames`: the video frames of one HLS segment held in memory (hls.py fetches it);
- `to_picture`: a decoded frame as packed I420, for the LiveKit republisher.

Stopping: every blocking FFmpeg call here is bounded by PyAV's timeouts (its interrupt
callback): an open by `open_timeout`, a read by READ_TIMEOUT, so a stop request is
noticed within about a second of a read however quiet the camera is.

URLs carry credentials and FFmpeg's error text repeats them: messages and logs here are
built from the error's type and strerror only. FFmpeg's own log stays off (PyAV's default).

Boundary: PyAV, imported lazily so that an emulator that never pulls never loads FFmpeg.
"""

from __future__ import annotations

import enum
import io
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# A blocked read gives up after this long (PyAV measured it at one to two times the value),
# then the reader checks its stop flag and reads on: quiet is not a drop by itself.
READ_TIMEOUT = 0.5
# Guess: how long Overshoot waits on a silent connection before reconnecting is
# undocumented; ten seconds outlasts a camera's keyframe interval several times over.
STALL_SECONDS = 10.0
# An attempt to open, bounded also by what is left of the connect window.
OPEN_TIMEOUT = 5.0
RTSP_OPTIONS = {
    # Documented: RTSP sources are pulled over TCP.
    "rtsp_transport": "tcp",
    # The create answers only after the first decoded frame: FFmpeg's default five
    # seconds of stream analysis would add about two seconds to it for nothing.
    "analyzeduration": "1000000",
}


class Outcome(enum.Enum):
    """How one connection to a source finished."""

    ENDED = "ended"  # the source reached its end (EOF, an HLS playlist's ENDLIST)
    DROPPED = "dropped"  # refused, unreachable, rejected, silent too long, unreadable
    STOPPED = "stopped"  # the emulator stopped it


@dataclass(frozen=True, slots=True)
class Picture:
    """One decoded frame as packed I420 (Y, then U, then V; even width and height)."""

    width: int
    height: int
    data: bytes = b""


Emit = Callable[[Picture | None], None]


def describe_error(exc: BaseException) -> str:
    """A loggable description of an FFmpeg, OS or HTTP error: never its URL."""
    strerror = getattr(exc, "strerror", None)
    if isinstance(strerror, str) and strerror:
        return f"{type(exc).__name__} ({strerror})"
    return type(exc).__name__


def to_picture(frame: Any) -> Picture:
    """A decoded PyAV frame as packed I420 (cropped to even dimensions, as I420 needs)."""
    width, height = frame.width & ~1, frame.height & ~1
    if frame.format.name != "yuv420p" or (width, height) != (frame.width, frame.height):
        frame = frame.reformat(width=width, height=height, format="yuv420p")
    return Picture(width, height, frame.to_ndarray().tobytes())


def read_rtsp(
    url: str,
    *,
    label: str,
    open_timeout: float,
    stop: threading.Event,
    emit: Emit,
    pictures: bool,
) -> Outcome:
    """Open `url` and emit every decoded video frame until the source ends, drops or `stop`
    is set. Blocking; `label` (a redacted host) is what logs may name."""
    import av
    import av.error

    if stop.is_set():
        return Outcome.STOPPED
    try:
        container: Any = av.open(
            url, options=RTSP_OPTIONS, timeout=(max(open_timeout, 0.1), READ_TIMEOUT)
        )
    except (av.error.FFmpegError, OSError) as exc:
        log.info("Could not open RTSP source %s: %s", label, describe_error(exc))
        return Outcome.DROPPED
    try:
        if not container.streams.video:
            log.warning("RTSP source %s has no video stream", label)
            return Outcome.DROPPED
        stream = container.streams.video[0]
        last_packet = time.monotonic()
        while not stop.is_set():
            try:
                for packet in container.demux(stream):
                    if stop.is_set():
                        return Outcome.STOPPED
                    if packet.size == 0:
                        continue  # PyAV's flush marker: the demuxer reached the end
                    last_packet = time.monotonic()
                    try:
                        frames = packet.decode()
                    except av.error.FFmpegError:
                        continue  # a damaged packet costs its frame, not the connection
                    for frame in frames:
                        emit(to_picture(frame) if pictures else None)
                # Guess: a camera that closes the connection (TEARDOWN, or a server that
                # went away cleanly) has "ended"; only a second end soon after a reconnect
                # ends the stream (pull.py), so a camera restart costs nothing.
                return Outcome.ENDED
            except av.error.ExitError:
                # Our read timeout fired: nothing arrived for READ_TIMEOUT. The demuxer
                # resumes on the next read (RTSP keeps its state across it).
                if time.monotonic() - last_packet > STALL_SECONDS:
                    log.info("RTSP source %s sent nothing for %.0fs", label, STALL_SECONDS)
                    return Outcome.DROPPED
            except (av.error.FFmpegError, OSError) as exc:
                log.info("Lost RTSP source %s: %s", label, describe_error(exc))
                return Outcome.DROPPED
        return Outcome.STOPPED
    finally:
        container.close()


def decode_frames(
    data: bytes, *, pictures: bool
) -> Generator[tuple[float, Picture | None], None, None]:
    """The video frames of one media segment in memory: (media time in seconds, picture).

    A frame without a timestamp is placed one frame interval after the previous one.
    Raises ValueError for a segment PyAV cannot read (no video, not a media file).
    """
    import av
    import av.error

    try:
        container: Any = av.open(io.BytesIO(data), "r")
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"unreadable segment: {describe_error(exc)}") from None
    try:
        if not container.streams.video:
            raise ValueError("segment has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        interval = 1 / float(rate) if rate else 1 / 30
        media_time = 0.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                if frame.time is not None:
                    media_time = float(frame.time)
                elif index:
                    media_time += interval
                yield media_time, to_picture(frame) if pictures else None
        except av.error.FFmpegError as exc:
            raise ValueError(f"unreadable segment: {describe_error(exc)}") from None
    finally:
        container.close()
