"""Unit tests of the emulator's pure state: leases, tombstones, caps, hooks and frames."""

from __future__ import annotations

import pytest

from overshoot_emulator.frames import FPS_WINDOW_MS, RETENTION_MS, FrameLedger
from overshoot_emulator.store import (
    Limit,
    LimitReached,
    Stream,
    StreamEnded,
    StreamNotFound,
    StreamStore,
)

pytestmark = pytest.mark.unit

T0 = 1_800_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []

    def stream_started(self, stream: Stream) -> None:
        self.events.append(("started", stream.room, None))

    def stream_ended(self, stream: Stream) -> None:
        self.events.append(("ended", stream.room, stream.end_reason))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> StreamStore:
    return StreamStore(ttl_seconds=10, tombstone_seconds=5, clock=clock)


def test_create_is_active_with_a_lease_and_a_room(store: StreamStore) -> None:
    stream = store.create("alice")
    assert stream.state == "active"
    assert stream.expires_at_ms == T0 + 10_000
    assert stream.room == f"overshoot-{stream.id}"
    assert store.lookup(stream.id, "alice") is stream


def test_foreign_owner_cannot_see_a_stream(store: StreamStore) -> None:
    stream = store.create("alice")
    with pytest.raises(StreamNotFound):
        store.lookup(stream.id, "bob")
    with pytest.raises(StreamNotFound):
        store.keepalive(stream.id, "bob")
    with pytest.raises(StreamNotFound):
        store.delete(stream.id, "bob")


def test_sweep_expires_a_lapsed_lease_then_purges_the_tombstone(
    store: StreamStore, clock: Clock
) -> None:
    stream = store.create("alice")
    clock.advance(9_999)
    assert store.expire_due() == 0
    clock.advance(1)
    assert store.expire_due() == 1
    assert stream.state == "ended"
    assert stream.end_reason == "expired"
    assert stream.ended_at_ms == T0 + 10_000
    clock.advance(4_999)
    store.expire_due()
    assert store.lookup(stream.id, "alice").state == "ended"
    clock.advance(1)
    store.expire_due()
    assert len(store) == 0


def test_reads_settle_expiry_without_waiting_for_a_sweep(store: StreamStore, clock: Clock) -> None:
    stream = store.create("alice")
    clock.advance(10_000)
    with pytest.raises(StreamEnded):
        store.keepalive(stream.id, "alice")
    assert stream.end_reason == "expired"
    clock.advance(5_000)
    with pytest.raises(StreamNotFound):
        store.lookup(stream.id, "alice")


def test_keepalive_moves_the_deadline_and_the_sweep_requeues(
    store: StreamStore, clock: Clock
) -> None:
    stream = store.create("alice")
    clock.advance(8_000)
    store.keepalive(stream.id, "alice")
    assert stream.expires_at_ms == T0 + 18_000
    clock.advance(2_000)  # past the first deadline
    assert store.expire_due() == 0
    assert stream.state == "active"
    clock.advance(8_000)
    assert store.expire_due() == 1


def test_keepalives_do_not_grow_the_expiry_heap(store: StreamStore, clock: Clock) -> None:
    streams = [store.create("alice") for _ in range(100)]
    for _ in range(50):
        clock.advance(1_000)
        for stream in streams:
            store.keepalive(stream.id, "alice")
        store.expire_due()
    assert len(store._expiries) == 100


def test_delete_ends_once_then_is_not_found(store: StreamStore) -> None:
    stream = store.create("alice")
    store.delete(stream.id, "alice")
    assert (stream.state, stream.end_reason) == ("ended", "deleted")
    with pytest.raises(StreamEnded):
        store.delete(stream.id, "alice")


def test_reap_and_keepalive_on_an_ended_stream(store: StreamStore) -> None:
    stream = store.create("alice")
    store.reap(stream.id)
    assert stream.end_reason == "reaped"
    with pytest.raises(StreamEnded):
        store.keepalive(stream.id, "alice")
    with pytest.raises(StreamEnded):
        store.reap(stream.id)


def test_limit_counts_active_streams_per_owner(store: StreamStore, clock: Clock) -> None:
    store.set_limit("alice", Limit(max_streams=2, retry_after=3))
    first = store.create("alice")
    store.create("alice")
    with pytest.raises(LimitReached) as refused:
        store.create("alice")
    assert refused.value.retry_after == 3
    store.create("bob")  # other keys are not capped
    store.delete(first.id, "alice")
    store.create("alice")
    clock.advance(10_000)  # all leases lapse, unobserved by any sweep
    store.create("alice")
    store.set_limit("alice", None)
    store.create("alice")
    store.create("alice")


def test_observers_hear_start_and_end(store: StreamStore, clock: Clock) -> None:
    recorder = Recorder()
    store.subscribe(recorder)
    a = store.create("alice")
    b = store.create("alice")
    c = store.create("alice")
    store.delete(a.id, "alice")
    store.reap(b.id)
    clock.advance(10_000)
    store.expire_due()
    assert recorder.events == [
        ("started", a.room, None),
        ("started", b.room, None),
        ("started", c.room, None),
        ("ended", a.room, "deleted"),
        ("ended", b.room, "reaped"),
        ("ended", c.room, "expired"),
    ]


def test_record_frames_fills_the_frame_fields(store: StreamStore, clock: Clock) -> None:
    stream = store.create("alice")
    assert stream.frames(clock.now).last_frame_at_ms is None
    for _ in range(50):
        clock.advance(40)
        store.record_frames(stream.id, 1)
    frames = stream.frames(clock.now)
    assert frames.first_frame_at_ms == T0 + 40
    assert frames.last_frame_at_ms == T0 + 2_000
    assert frames.last_frame_index == 49
    assert frames.stream_time_ms == 1_960
    assert frames.recent_fps == pytest.approx(25.0)
    assert frames.retained_frame_count == 50
    assert frames.evicted_frame_count == 0
    assert frames.first_available_frame_index == 0


def test_frames_on_an_ended_stream_are_refused(store: StreamStore) -> None:
    stream = store.create("alice")
    store.reap(stream.id)
    with pytest.raises(StreamEnded):
        store.record_frames(stream.id, 1)
    with pytest.raises(StreamNotFound):
        store.record_frames("no-such-stream", 1)


def test_recent_fps_decays_to_zero_when_frames_stop() -> None:
    ledger = FrameLedger()
    ledger.record_run(100, 20.0, T0)
    assert ledger.snapshot(T0).recent_fps == pytest.approx(20.0)
    assert 0 < (ledger.snapshot(T0 + 2_000).recent_fps or 0) < 20.0
    assert ledger.snapshot(T0 + FPS_WINDOW_MS).recent_fps == 0.0


def test_old_frames_are_evicted_but_indices_never_reset() -> None:
    ledger = FrameLedger()
    ledger.record_run(10 * 60 * 10 + 100, 10.0, T0)  # 610 s of frames at 10 fps
    snapshot = ledger.snapshot(T0)
    assert snapshot.last_frame_index == 6_099
    assert snapshot.retained_frame_count is not None
    assert snapshot.evicted_frame_count is not None
    assert snapshot.retained_frame_count + snapshot.evicted_frame_count == 6_100
    # Retention is kept per wall-clock second: within one second of 600 s.
    assert abs(snapshot.retained_frame_count - 6_000) <= 10
    assert snapshot.first_available_frame_index == snapshot.evicted_frame_count
    assert snapshot.first_available_frame_at_ms is not None
    assert snapshot.first_available_frame_at_ms >= T0 - RETENTION_MS - 1_000

    later = ledger.snapshot(T0 + RETENTION_MS + 1)
    assert later.retained_frame_count == 0
    assert later.first_available_frame_index is None
    ledger.record(1, T0 + RETENTION_MS + 2)
    assert ledger.snapshot(T0 + RETENTION_MS + 2).last_frame_index == 6_100


def test_frames_reported_late_never_run_backwards() -> None:
    ledger = FrameLedger()
    ledger.record(1, T0 + 100)
    ledger.record(2, T0 + 50)
    snapshot = ledger.snapshot(T0 + 100)
    assert snapshot.last_frame_at_ms == T0 + 100
    assert snapshot.last_frame_index == 2


def test_delete_drops_retained_frames(store: StreamStore) -> None:
    stream = store.create("alice")
    store.record_frame_run(stream.id, 10, 10.0)
    store.delete(stream.id, "alice")
    frames = stream.frames(store.now_ms())
    assert frames.retained_frame_count == 0
    assert frames.last_frame_index == 9


def test_reset_forgets_everything_and_ends_active_streams(store: StreamStore) -> None:
    recorder = Recorder()
    store.subscribe(recorder)
    stream = store.create("alice")
    store.set_limit("alice", Limit(0))
    store.reset()
    assert len(store) == 0
    assert recorder.events[-1] == ("ended", stream.room, "reaped")
    store.create("alice")  # the limit went too
