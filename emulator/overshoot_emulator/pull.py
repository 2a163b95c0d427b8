"""Camera sources the emulator pulls itself (v1beta `source`): connect, pull, reconnect, end.

Role: `PullManager.create` serves a create with a source: it refuses a source that resolves
to a non-public address, connects within the connect window (retrying; the create answers
only once one video frame was decoded), then creates the stream and leaves its `Pull`
running while the stream is active. A pull books every decoded frame into the stream
(`StreamStore.record_pull`: the frame fields and `last_pull`) and hands it to the LiveKit
republisher when one is configured. A dropped source is reconnected with backoff (1 s
doubling to 30 s, documented); a source that ends, and ends again within 30 s after a
reconnect, ends the stream as "source_ended". DELETE, expiry and reaping end the stream,
and this manager, a `StreamObserver`, stops its pull at once.

Threads: an RTSP connection is read with PyAV, which blocks, on a thread of its own
(decode.py; it notices a stop within about a second); an HLS connection is an asyncio task
(hls.py) with its own decoder thread. Decoded frames reach the store on the event loop.

Nothing here runs for client-published streams: the hot path never resolves a name, starts
a thread or loads PyAV.

Boundary: the pull's own threads and tasks; PyAV (decode.py), HTTP (hls.py) and LiveKit
(republish.py) are reached through their modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp

from overshoot_emulator import decode, hls
from overshoot_emulator.decode import Outcome, Picture
from overshoot_emulator.sources import AddressClass, SourceSpec, classify_url, url_allowed
from overshoot_emulator.store import SourceInfo, StoreError, Stream, StreamStore, wall_clock_ms

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 15.0
# Documented: "1 s backoff growing to 30 s".
BACKOFF_INITIAL = 1.0
BACKOFF_CAP = 30.0
# Documented: "a source that ends, and ends again shortly after a reconnect, ends the Stream".
# Guess: "shortly" is undocumented; 30 s.
ENDS_AGAIN_WINDOW_MS = 30_000
# On shutdown, how long to wait for pull threads to notice; they are daemons after that.
SHUTDOWN_GRACE = 3.0

PullState = Literal["connecting", "pulling", "reconnecting", "stopped"]


class SourceRefused(Exception):
    """The create cannot pull this source; `detail` is the 422 answer's text."""

    detail = "Could not connect to source url (check reachability and credentials)"


class SourceNotPublic(SourceRefused):
    # Guess: the answer to a non-public source is undocumented (beyond "refused").
    detail = "Source url must resolve to a public address"


class PullsClosed(Exception):
    """The emulator is shutting down: no new pulls."""


class Backoff:
    """Reconnect delays: `initial` seconds, doubling up to `cap`; `reset` after a success."""

    def __init__(self, initial: float = BACKOFF_INITIAL, cap: float = BACKOFF_CAP) -> None:
        self.initial = initial
        self.cap = cap
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.initial


class EndRule:
    """When a source's end ends its stream: an end within `window_ms` after a reconnect
    that followed an earlier end. A connection that outlives the window starts afresh."""

    def __init__(self, window_ms: int = ENDS_AGAIN_WINDOW_MS) -> None:
        self.window_ms = window_ms
        self._ended = False
        self._reconnected_at: int | None = None

    def connected(self, now_ms: int) -> None:
        """A connection delivered its first frame."""
        if self._ended:
            self._ended = False
            self._reconnected_at = now_ms

    def ended(self, now_ms: int) -> bool:
        """A connection that had delivered frames reached the source's end: True when the
        stream ends with it."""
        if self._reconnected_at is not None and now_ms - self._reconnected_at <= self.window_ms:
            return True
        self._ended = True
        self._reconnected_at = None
        return False


@dataclass(frozen=True, slots=True)
class PullSettings:
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    allow_private: bool = False


class Republisher(Protocol):
    """Where a pull's pictures go besides the store (republish.py's LiveKit publisher)."""

    def start(self) -> None: ...

    def push(self, picture: Picture) -> None: ...

    async def aclose(self) -> None: ...


RepublisherFactory = Callable[[Stream], Republisher]


# --- one connection -------------------------------------------------------------------


class _Session:
    """One connection to the source. Frames are delivered on the event loop."""

    def __init__(self, on_picture: Callable[[Picture | None], None]) -> None:
        self.first_frame = asyncio.Event()
        self.frames = 0
        self._on_picture = on_picture
        self._stopped = False

    def deliver(self, picture: Picture | None) -> None:
        if self._stopped:
            return
        self.frames += 1
        self.first_frame.set()
        self._on_picture(picture)

    async def wait(self) -> Outcome:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopped = True


class _ThreadSession(_Session):
    """An RTSP connection, read on a thread of its own (PyAV blocks)."""

    def __init__(
        self,
        pull: Pull,
        open_timeout: float,
        pictures: bool,
        threads: set[threading.Thread],
    ) -> None:
        super().__init__(pull.on_picture)
        self._loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self._done: asyncio.Future[Outcome] = self._loop.create_future()
        self._threads = threads
        spec = pull.spec

        def read() -> Outcome:
            return decode.read_rtsp(
                spec.url,
                label=spec.host,
                open_timeout=open_timeout,
                stop=self._stop,
                emit=self._emit,
                pictures=pictures,
            )

        self._read = read
        # The thread's name is shown by debuggers and `py-spy`: the host only.
        self._thread = threading.Thread(
            target=self._main, name=f"pull-rtsp-{spec.host}", daemon=True
        )
        threads.add(self._thread)
        self._thread.start()

    def _emit(self, picture: Picture | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self.deliver, picture)
        except RuntimeError:
            self._stop.set()  # the loop is closed: the process is exiting

    def _main(self) -> None:
        try:
            outcome = self._read()
        except Exception as exc:
            # Only the type: an exception's text may hold the URL.
            log.warning("RTSP reader failed: %s", decode.describe_error(exc))
            outcome = Outcome.DROPPED
        finally:
            self._threads.discard(threading.current_thread())
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._finish, outcome)

    def _finish(self, outcome: Outcome) -> None:
        if not self._done.done():
            self._done.set_result(outcome)

    async def wait(self) -> Outcome:
        # Shielded: giving up on waiting (the connect window closing) must not lose it.
        return await asyncio.shield(self._done)

    def stop(self) -> None:
        super().stop()
        self._stop.set()


class _TaskSession(_Session):
    """An HLS connection: an asyncio task, stopped by cancelling it."""

    def __init__(
        self,
        pull: Pull,
        open_timeout: float,
        pictures: bool,
        http: aiohttp.ClientSession,
        check: hls.UrlCheck | None,
    ) -> None:
        super().__init__(pull.on_picture)
        self._task = asyncio.get_running_loop().create_task(
            hls.read_hls(
                http,
                pull.spec.url,
                label=pull.spec.host,
                open_timeout=open_timeout,
                check=check,
                emit=self.deliver,
                pictures=pictures,
            ),
            name="pull-hls",
        )

    async def wait(self) -> Outcome:
        await asyncio.wait({self._task})
        if self._task.cancelled():
            return Outcome.STOPPED
        exc = self._task.exception()
        if exc is not None:
            log.warning("HLS reader failed: %s", decode.describe_error(exc))
            return Outcome.DROPPED
        return self._task.result()

    def stop(self) -> None:
        super().stop()
        self._task.cancel()


# --- one pulled source ------------------------------------------------------------------


class Pull:
    """A source pulled for one stream, from the first connect to the stream's end."""

    def __init__(self, spec: SourceSpec, manager: PullManager) -> None:
        self.spec = spec
        self._manager = manager
        self.stream_id: str | None = None
        self.state: PullState = "connecting"
        self.connections = 0
        self.frames = 0
        self.republisher: Republisher | None = None
        loop = asyncio.get_running_loop()
        # Resolved at the first decoded frame; fails with SourceRefused.
        self.connected: asyncio.Future[None] = loop.create_future()
        self._pending = 0  # frames decoded before the stream existed
        self._backoff = Backoff()
        self._rule = EndRule()
        self._session: _Session | None = None
        self._task = loop.create_task(self._run(), name="pull")

    # --- the loop side ------------------------------------------------------------

    def attach(self, stream: Stream, republisher: Republisher | None) -> None:
        """The stream exists now: book what was pulled so far and keep booking."""
        self.stream_id = stream.id
        self.republisher = republisher
        if self._pending:
            self._book(self._pending)
            self._pending = 0

    def on_picture(self, picture: Picture | None) -> None:
        self.frames += 1
        if self.stream_id is None:
            self._pending += 1
            return
        self._book(1)
        if picture is not None and self.republisher is not None:
            self.republisher.push(picture)

    def _book(self, count: int) -> None:
        assert self.stream_id is not None
        with contextlib.suppress(StoreError):
            # Frames racing the stream's end are dropped; the end stops this pull.
            self._manager.store.record_pull(self.stream_id, count)

    def stop(self) -> None:
        """Stop at once; a reader thread notices within about a second."""
        self.state = "stopped"
        if self._session is not None:
            self._session.stop()
        self._task.cancel()
        if not self.connected.done():
            self.connected.set_exception(PullsClosed())
            self.connected.exception()  # retrieved: nobody may be waiting any more
        if self.republisher is not None:
            self._manager.spawn(self.republisher.aclose())

    def status(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "source_type": self.spec.type,
            "source_host": self.spec.host,
            "state": self.state,
            "connections": self.connections,
            "frames": self.frames,
        }

    # --- the supervisor -------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._supervise()
        except Exception as exc:
            # A bug must neither leave a create waiting forever nor log a traceback whose
            # frames may hold the URL: the type only.
            log.error("Pull of source %s failed: %s", self.spec.host, type(exc).__name__)
            self._refuse(SourceRefused())
            self.state = "stopped"

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._manager.settings.connect_timeout
        while True:
            connecting = not self.connected.done()
            if connecting and loop.time() >= deadline:
                self._refuse(SourceRefused())
                return
            try:
                outcome = await self._connect(deadline if connecting else None)
            except SourceNotPublic as exc:
                if connecting:
                    self._refuse(exc)
                    return
                log.warning(
                    "Source %s of stream %s no longer resolves to a public address",
                    self.spec.host,
                    self.stream_id,
                )
                outcome = Outcome.DROPPED
            if outcome is Outcome.STOPPED:
                return
            if outcome is Outcome.ENDED and self._rule.ended(wall_clock_ms()):
                self._source_ended()
                return
            delay = self._backoff.next()
            if not self.connected.done():
                delay = min(delay, max(0.0, deadline - loop.time()))
            elif self.stream_id is not None:
                log.info(
                    "Source %s of stream %s %s; reconnecting in %gs",
                    self.spec.host,
                    self.stream_id,
                    "ended" if outcome is Outcome.ENDED else "dropped",
                    delay,
                )
                self.state = "reconnecting"
            await asyncio.sleep(delay)

    async def _connect(self, deadline: float | None) -> Outcome:
        """One connection, until it ends. With a deadline (the connect window), a
        connection without a decoded frame by then is given up."""
        loop = asyncio.get_running_loop()
        if not self._manager.settings.allow_private:
            # Before every connection, as the answer may change. HLS also checks every URL
            # it fetches (segments and redirects may lead to other hosts). A gap an emulator
            # accepts: FFmpeg and aiohttp resolve the name again to connect.
            address = await classify_url(self.spec.url)
            if address is AddressClass.NOT_PUBLIC:
                raise SourceNotPublic()
            if address is AddressClass.UNRESOLVED:
                return Outcome.DROPPED
        open_timeout = decode.OPEN_TIMEOUT
        if deadline is not None:
            open_timeout = min(open_timeout, deadline - loop.time())
        session = self._manager.open_session(self, max(open_timeout, 0.1))
        self._session = session
        self.connections += 1
        first = loop.create_task(session.first_frame.wait())
        ended = loop.create_task(session.wait())
        try:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait({first, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not session.first_frame.is_set():
                # Refused, failed, or ended before a single frame: a failed attempt, never
                # an end of the source (that takes a connection that delivered).
                return Outcome.DROPPED
            self._connected()
            return await ended
        finally:
            first.cancel()
            ended.cancel()
            session.stop()
            self._session = None

    def _connected(self) -> None:
        self._backoff.reset()
        self._rule.connected(wall_clock_ms())
        if self.state != "stopped":
            self.state = "pulling"
        if not self.connected.done():
            self.connected.set_result(None)
        elif self.stream_id is not None:
            log.info("Reconnected to source %s of stream %s", self.spec.host, self.stream_id)

    def _refuse(self, exc: SourceRefused) -> None:
        self.state = "stopped"
        if not self.connected.done():
            self.connected.set_exception(exc)

    def _source_ended(self) -> None:
        self.state = "stopped"
        if self.stream_id is None:
            return
        log.info(
            "Ended stream %s: its source %s ended again soon after a reconnect",
            self.stream_id,
            self.spec.host,
        )
        with contextlib.suppress(StoreError):
            self._manager.store.end_source(self.stream_id)


# --- every pull ---------------------------------------------------------------------------


class PullManager:
    """The pulls of every stream with a source; a `StreamObserver` on the store."""

    def __init__(
        self,
        store: StreamStore,
        settings: PullSettings,
        republisher: RepublisherFactory | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._republisher = republisher
        self._pulls: dict[str, Pull] = {}
        self._connecting: set[Pull] = set()
        self._threads: set[threading.Thread] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._closed = False

    # --- the API's operation --------------------------------------------------------

    async def create(self, owner: str, region: str, spec: SourceSpec) -> Stream:
        """Connect to `spec`, then create the stream that pulls it.

        Raises LimitReached (checked before connecting, and again after), SourceNotPublic
        at once, SourceRefused after the connect window, PullsClosed on shutdown.
        """
        if self._closed:
            raise PullsClosed()
        self.store.check_limit(owner)
        if importlib.util.find_spec("av") is None:
            log.error("Refused a %s source: pulling needs PyAV (the `emulator` extra)", spec.type)
            raise SourceRefused()
        pull = Pull(spec, self)
        self._connecting.add(pull)
        try:
            await pull.connected
        except BaseException:
            pull.stop()
            raise
        finally:
            self._connecting.discard(pull)
        try:
            stream = self.store.create(
                owner, region=region, source=SourceInfo(spec.type, spec.host)
            )
        except BaseException:
            pull.stop()
            raise
        self._pulls[stream.id] = pull
        republisher = self._republisher(stream) if self._republisher is not None else None
        pull.attach(stream, republisher)
        if republisher is not None:
            republisher.start()
        log.info("Started pulling %s source %s for stream %s", spec.type, spec.host, stream.id)
        return stream

    # --- StreamObserver -------------------------------------------------------------

    def stream_started(self, stream: Stream) -> None:
        pass  # a pull starts before its stream exists (create above)

    def stream_ended(self, stream: Stream) -> None:
        pull = self._pulls.pop(stream.id, None)
        if pull is not None:
            pull.stop()
            log.info("Stopped pulling source %s of stream %s", pull.spec.host, stream.id)

    # --- sessions and shutdown --------------------------------------------------------

    def open_session(self, pull: Pull, open_timeout: float) -> _Session:
        pictures = self._republisher is not None
        if pull.spec.type == "rtsp":
            return _ThreadSession(pull, open_timeout, pictures, self._threads)
        if self._http is None:
            self._http = aiohttp.ClientSession()
        check = None if self.settings.allow_private else url_allowed
        return _TaskSession(pull, open_timeout, pictures, self._http, check)

    def spawn(self, coro: Any) -> None:
        """Run `coro` in the background, kept referenced until done (closing helpers)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def status(self) -> dict[str, Any]:
        return {
            "pulls": [pull.status() for pull in self._pulls.values()],
            "connecting": len(self._connecting),
            "reader_threads": len(self._threads),
        }

    async def aclose(self) -> None:
        """Stop every pull (and pending connect); wait briefly for reader threads."""
        self._closed = True
        for pull in [*self._connecting, *self._pulls.values()]:
            pull.stop()
        self._pulls.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_GRACE)
        threads = list(self._threads)
        if threads:
            await asyncio.to_thread(_join, threads, SHUTDOWN_GRACE)
        if self._http is not None:
            await self._http.close()
            self._http = None


def _join(threads: list[threading.Thread], timeout: float) -> None:
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        for thread in threads:
            while thread.is_alive() and not deadline.is_set():
                thread.join(0.1)
    finally:
        timer.cancel()
    alive = sum(thread.is_alive() for thread in threads)
    if alive:
        log.warning("%d pull reader thread(s) still busy at exit", alive)
