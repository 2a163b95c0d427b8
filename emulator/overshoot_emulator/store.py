"""The emulator's state: streams, their leases, tombstones, per-key caps and the hooks a
media gateway uses.

Pure logic with an injected millisecond clock; no HTTP, no asyncio. Every operation a
request triggers is O(1) or O(log n) in the number of streams:
- each active stream has exactly one entry in an expiry heap; a keepalive only moves the
  stream's deadline, and the sweep re-queues an entry it finds renewed;
- each ended stream has one entry in a purge heap (end of its tombstone window);
- reads settle the one stream they touch against the clock, so answers are exact even
  between sweeps.

The media-gateway boundary (for a LiveKit subscriber built elsewhere):
- `StreamObserver.stream_started(stream)` / `stream_ended(stream)`: join / leave
  `stream.room`; subscribe with `StreamStore.subscribe`.
- `StreamStore.record_frames(stream_id, count, at_ms)`: report decoded frames.

The pull boundary (pull.py, for streams with a camera source): `record_pull` books a
pulled frame and `last_pull`, `end_source` ends a stream whose source ended for good. A
stream keeps only the source's type and host; the URL never reaches the store.
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from overshoot_emulator.config import fingerprint
from overshoot_emulator.frames import NO_FRAMES, FrameLedger, FrameSnapshot
from overshoot_emulator.regions import DEFAULT_REGION
from overshoot_emulator.tokens import room_name

log = logging.getLogger(__name__)

StreamState = Literal["active", "ended"]
# Guess: "source_ended" (a pulled source that ended twice) is not a documented end reason.
EndReason = Literal["expired", "deleted", "reaped", "source_ended"]

# Documented: `last_pull` is written at most once a second.
LAST_PULL_INTERVAL_MS = 1000


def wall_clock_ms() -> int:
    # The server's wall clock decides expiry (documented), so not a monotonic clock.
    return time.time_ns() // 1_000_000


class StoreError(Exception):
    """Base of everything the store refuses."""


class StreamNotFound(StoreError):
    """Unknown, purged, or owned by another key: callers cannot tell which (by design)."""


class StreamEnded(StoreError):
    """The stream exists (a tombstone) but is no longer active."""


class WrongRegion(StoreError):
    """The caller owns the stream, but another region serves it."""

    def __init__(self, stream_id: str, expected: str) -> None:
        super().__init__(f"Stream {stream_id} is served by region {expected}")
        self.expected = expected


class LimitReached(StoreError):
    def __init__(self, max_streams: int, retry_after: float) -> None:
        super().__init__(f"Concurrent stream limit reached ({max_streams} active streams)")
        self.max_streams = max_streams
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What a stream may show of its camera source: the type and the host, never the URL."""

    type: str
    host: str


@dataclass(slots=True, eq=False)
class Stream:
    id: str
    owner: str  # SHA-256 of the owning API key
    room: str  # internal: the LiveKit room; never in API answers
    created_at_ms: int
    ttl_ms: int
    expires_at_ms: int
    state: StreamState = "active"
    ended_at_ms: int | None = None
    end_reason: EndReason | None = None
    keepalives: int = 0
    region: str = DEFAULT_REGION
    # None for a client-published stream; set for one the emulator pulls itself.
    source: SourceInfo | None = None
    last_pull_ms: int | None = None
    # Created on the first frame: most streams in a load test never see one.
    ledger: FrameLedger | None = field(default=None, repr=False)

    @property
    def owner_fingerprint(self) -> str:
        return fingerprint(self.owner)

    @property
    def ttl_seconds(self) -> float:
        return self.ttl_ms / 1000

    def frames(self, now_ms: int) -> FrameSnapshot:
        return self.ledger.snapshot(now_ms) if self.ledger else NO_FRAMES

    def stream_time_ms(self) -> int | None:
        return self.ledger.stream_time_ms() if self.ledger else None


@dataclass(frozen=True, slots=True)
class Limit:
    max_streams: int
    retry_after: float = 1.0


class StreamObserver(Protocol):
    """Lifecycle hooks for a media gateway. Called synchronously from the event loop: an
    implementation schedules its own work and returns at once; exceptions are logged."""

    def stream_started(self, stream: Stream) -> None: ...

    def stream_ended(self, stream: Stream) -> None: ...


class StreamStore:
    def __init__(
        self,
        *,
        ttl_seconds: float,
        tombstone_seconds: float,
        clock: Callable[[], int] = wall_clock_ms,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.ttl_ms = round(ttl_seconds * 1000)
        self.tombstone_ms = round(tombstone_seconds * 1000)
        self.now_ms = clock
        self._new_id = new_id
        self._streams: dict[str, Stream] = {}
        self._expiries: list[tuple[int, str]] = []
        self._purges: list[tuple[int, str]] = []
        self._active_by_owner: Counter[str] = Counter()
        self._limits: dict[str, Limit] = {}
        self._observers: list[StreamObserver] = []

    # --- the API's operations -------------------------------------------------------

    def check_limit(self, owner: str) -> None:
        """Raise LimitReached when `owner` may not create another stream now."""
        limit = self._limits.get(owner)
        if limit is not None and self._active_by_owner[owner] >= limit.max_streams:
            # Counts can be stale by one sweep for leases that ran out unobserved; settle
            # them before refusing, so a cap is never enforced against dead streams.
            self.expire_due()
            if self._active_by_owner[owner] >= limit.max_streams:
                raise LimitReached(limit.max_streams, limit.retry_after)

    def create(
        self, owner: str, *, region: str = DEFAULT_REGION, source: SourceInfo | None = None
    ) -> Stream:
        self.check_limit(owner)
        now = self.now_ms()
        stream_id = self._new_id()
        stream = Stream(
            id=stream_id,
            owner=owner,
            room=room_name(stream_id),
            created_at_ms=now,
            ttl_ms=self.ttl_ms,
            expires_at_ms=now + self.ttl_ms,
            region=region,
            source=source,
        )
        self._streams[stream_id] = stream
        self._active_by_owner[owner] += 1
        heapq.heappush(self._expiries, (stream.expires_at_ms, stream_id))
        self._notify("stream_started", stream)
        return stream

    def lookup(self, stream_id: str, owner: str, region: str | None = None) -> Stream:
        """An active stream or a tombstone owned by `owner`, served by `region` (if given).

        Ownership is checked first: another key's stream is not found, whatever region
        asks, so a foreign key learns nothing about where a stream lives.
        """
        stream = self.get(stream_id)
        if stream is None or stream.owner != owner:
            raise StreamNotFound(stream_id)
        if region is not None and stream.region != region:
            raise WrongRegion(stream_id, stream.region)
        return stream

    def keepalive(self, stream_id: str, owner: str, region: str | None = None) -> Stream:
        stream = self.lookup(stream_id, owner, region)
        if stream.state != "active":
            raise StreamEnded(stream_id)
        # The lease counts from the last keepalive; the heap entry is re-queued lazily.
        stream.expires_at_ms = self.now_ms() + stream.ttl_ms
        stream.keepalives += 1
        return stream

    def delete(self, stream_id: str, owner: str, region: str | None = None) -> Stream:
        # Contract: deletes are "idempotent within the lookup window" and clients treat
        # 200 and 404 alike. We answer 200 only for an active stream; a second DELETE (or
        # one on an expired/reaped tombstone) is 404, the stricter of the two readings.
        stream = self.lookup(stream_id, owner, region)
        if stream.state != "active":
            raise StreamEnded(stream_id)
        self._end(stream, "deleted", self.now_ms())
        # Documented: DELETE drops retained frames.
        if stream.ledger is not None:
            stream.ledger.drop_retained()
        return stream

    # --- admin and gateway ----------------------------------------------------------

    def get(self, stream_id: str) -> Stream | None:
        """Any visible stream regardless of owner, settled against the clock."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        now = self.now_ms()
        if stream.state == "active" and stream.expires_at_ms <= now:
            self._end(stream, "expired", stream.expires_at_ms)
        if stream.ended_at_ms is not None and stream.ended_at_ms + self.tombstone_ms <= now:
            del self._streams[stream_id]
            return None
        return stream

    def reap(self, stream_id: str) -> Stream:
        """End a stream as the system would ("reaped": when it happens is undocumented)."""
        stream = self.get(stream_id)
        if stream is None:
            raise StreamNotFound(stream_id)
        if stream.state != "active":
            raise StreamEnded(stream_id)
        self._end(stream, "reaped", self.now_ms())
        return stream

    def record_frames(self, stream_id: str, count: int, at_ms: int | None = None) -> Stream:
        """The media gateway saw `count` decoded frames at `at_ms` (default: now).

        Raises StreamNotFound / StreamEnded: frames racing a stream's end are expected,
        and a gateway simply drops them.
        """
        stream = self._active(stream_id)
        if stream.ledger is None:
            stream.ledger = FrameLedger()
        stream.ledger.record(count, self.now_ms() if at_ms is None else at_ms)
        return stream

    def record_pull(self, stream_id: str, count: int = 1, at_ms: int | None = None) -> Stream:
        """The stream's own source pull decoded `count` frames at `at_ms` (default: now).

        Books them like gateway frames and moves `last_pull`, at most once a second: a
        reader sees it lag the newest frame by up to a second (documented).
        """
        at = self.now_ms() if at_ms is None else at_ms
        stream = self.record_frames(stream_id, count, at)
        if stream.last_pull_ms is None or at - stream.last_pull_ms >= LAST_PULL_INTERVAL_MS:
            stream.last_pull_ms = at
        return stream

    def end_source(self, stream_id: str) -> Stream:
        """End a pulled stream whose source ended, and ended again soon after a reconnect."""
        stream = self._active(stream_id)
        self._end(stream, "source_ended", self.now_ms())
        return stream

    def record_frame_run(self, stream_id: str, count: int, fps: float) -> Stream:
        """`count` frames arrived at a steady `fps`, the last one now (fake media)."""
        stream = self._active(stream_id)
        if stream.ledger is None:
            stream.ledger = FrameLedger()
        stream.ledger.record_run(count, fps, self.now_ms())
        return stream

    def set_limit(self, owner: str, limit: Limit | None) -> None:
        if limit is None:
            self._limits.pop(owner, None)
        else:
            self._limits[owner] = limit

    def streams(self) -> Iterator[Stream]:
        """Every visible stream (admin listing: O(n), never on the API path)."""
        for stream_id in list(self._streams):
            stream = self.get(stream_id)
            if stream is not None:
                yield stream

    def active_count(self, owner: str | None = None) -> int:
        if owner is None:
            return sum(self._active_by_owner.values())
        return self._active_by_owner[owner]

    def __len__(self) -> int:
        return len(self._streams)

    def expire_due(self) -> int:
        """End streams whose lease ran out and purge tombstones past their window.

        Returns how many streams ended. Cost: O(k log n) for the k entries that are due.
        """
        now = self.now_ms()
        ended = 0
        while self._expiries and self._expiries[0][0] <= now:
            _, stream_id = heapq.heappop(self._expiries)
            stream = self._streams.get(stream_id)
            if stream is None or stream.state != "active":
                continue  # deleted or reaped meanwhile: the entry is stale
            if stream.expires_at_ms > now:
                heapq.heappush(self._expiries, (stream.expires_at_ms, stream_id))
                continue  # renewed by a keepalive
            self._end(stream, "expired", stream.expires_at_ms)
            ended += 1
        while self._purges and self._purges[0][0] <= now:
            _, stream_id = heapq.heappop(self._purges)
            stream = self._streams.get(stream_id)
            if stream is not None and stream.state == "ended":
                del self._streams[stream_id]
        return ended

    def reset(self) -> None:
        """Forget everything. Active streams end as "reaped" so observers leave rooms."""
        for stream in list(self._streams.values()):
            if stream.state == "active":
                self._end(stream, "reaped", self.now_ms())
        self._streams.clear()
        self._expiries.clear()
        self._purges.clear()
        self._active_by_owner.clear()
        self._limits.clear()

    def subscribe(self, observer: StreamObserver) -> None:
        self._observers.append(observer)

    def unsubscribe(self, observer: StreamObserver) -> None:
        self._observers.remove(observer)

    # --- internals ------------------------------------------------------------------

    def _active(self, stream_id: str) -> Stream:
        stream = self.get(stream_id)
        if stream is None:
            raise StreamNotFound(stream_id)
        if stream.state != "active":
            raise StreamEnded(stream_id)
        return stream

    def _end(self, stream: Stream, reason: EndReason, at_ms: int) -> None:
        stream.state = "ended"
        stream.end_reason = reason
        stream.ended_at_ms = at_ms
        self._active_by_owner[stream.owner] -= 1
        if self._active_by_owner[stream.owner] <= 0:
            del self._active_by_owner[stream.owner]
        heapq.heappush(self._purges, (at_ms + self.tombstone_ms, stream.id))
        self._notify("stream_ended", stream)

    def _notify(self, hook: Literal["stream_started", "stream_ended"], stream: Stream) -> None:
        for observer in self._observers:
            try:
                getattr(observer, hook)(stream)
            except Exception:
                log.exception("Observer %r failed in %s for stream %s", observer, hook, stream.id)
