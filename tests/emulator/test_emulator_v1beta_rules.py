"""Unit tests of the emulator's v1beta rules, without servers: which addresses a source may
resolve to, how a source URL is validated and redacted, region selection, the reconnect
backoff, the "ends twice" rule, `last_pull`, HLS playlists and pacing, rate-limit headers
and the order of the ownership and region checks."""

from __future__ import annotations

import pytest

from overshoot_emulator.faults import Fault, rate_limit_headers
from overshoot_emulator.hls import (
    MediaPlaylist,
    MultivariantPlaylist,
    Pacer,
    PlaylistError,
    first_to_play,
    parse_playlist,
    reload_delay,
)
from overshoot_emulator.pull import Backoff, EndRule
from overshoot_emulator.regions import Regions, parse_regions, unknown_region_body
from overshoot_emulator.sources import (
    AddressClass,
    SourceInvalid,
    SourceSpec,
    classify,
    is_public_address,
    parse_source,
    redacted_host,
)
from overshoot_emulator.store import (
    SourceInfo,
    StreamEnded,
    StreamNotFound,
    StreamStore,
    WrongRegion,
)

pytestmark = pytest.mark.unit

T0 = 1_800_000_000_000
SECRET = "hunter2-Pa55"


# --- addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("10.0.0.7", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("240.0.0.1", False),
        ("224.0.0.1", False),
        ("100.64.0.1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("not-an-address", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_one_non_public_address_among_several_is_enough_to_refuse() -> None:
    assert classify(["8.8.8.8", "1.1.1.1"]) is AddressClass.PUBLIC
    assert classify(["8.8.8.8", "10.0.0.1"]) is AddressClass.NOT_PUBLIC
    assert classify([]) is AddressClass.UNRESOLVED


# --- source bodies and redaction ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, None),
        ({"source": None}, None),
        ({"other": 1}, None),
        (
            {"source": {"type": "rtsp", "url": "rtsp://u:p@cam.example:554/s"}},
            SourceSpec("rtsp", "rtsp://u:p@cam.example:554/s"),
        ),
        (
            {"source": {"type": "rtsp", "url": "RTSPS://cam.example/s", "extra": True}},
            SourceSpec("rtsp", "RTSPS://cam.example/s"),
        ),
        (
            {"source": {"type": "hls", "url": "http://cdn.example/live.m3u8"}},
            SourceSpec("hls", "http://cdn.example/live.m3u8"),
        ),
    ],
)
def test_sources_are_parsed(body: dict[str, object], expected: SourceSpec | None) -> None:
    assert parse_source(body) == expected


@pytest.mark.parametrize(
    ("source", "loc"),
    [
        ({"type": "rtsp", "url": f"https://u:{SECRET}@cam.example/s"}, ["body", "source", "url"]),
        ({"type": "hls", "url": f"rtsp://u:{SECRET}@cam.example/s"}, ["body", "source", "url"]),
        ({"type": "rtsp", "url": f"rtsp://u:{SECRET}@cam.example:x/s"}, ["body", "source", "url"]),
        ({"type": "rtsp", "url": f"rtsp://u:{SECRET}@/s"}, ["body", "source", "url"]),
        ({"type": "rtsp", "url": ""}, ["body", "source", "url"]),
        ({"type": "file", "url": f"file:///{SECRET}"}, ["body", "source", "type"]),
        ({"url": f"rtsp://{SECRET}@cam.example/s"}, ["body", "source", "type"]),
    ],
)
def test_invalid_sources_never_echo_the_url(source: dict[str, object], loc: list[str]) -> None:
    with pytest.raises(SourceInvalid) as invalid:
        parse_source({"source": source})
    [error] = invalid.value.errors
    assert error["loc"] == loc
    assert set(error) == {"loc", "msg", "type"}
    assert SECRET not in str(invalid.value.errors)
    assert "cam.example" not in str(invalid.value.errors)


def test_a_spec_never_shows_its_url() -> None:
    spec = SourceSpec("rtsp", f"rtsp://admin:{SECRET}@cam.example:8554/live?token={SECRET}")
    assert SECRET not in repr(spec)
    assert spec.host == "cam.example:8554"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        (f"rtsp://admin:{SECRET}@cam.example:8554/live", "cam.example:8554"),
        (f"https://cdn.example/live.m3u8?sig={SECRET}", "cdn.example"),
        (f"rtsp://u:{SECRET}@[2001:db8::1]:554/s", "[2001:db8::1]:554"),
        (f"rtsp://u:{SECRET}@cam.example:notaport/s", "<invalid url>"),
    ],
)
def test_redacted_host_keeps_only_host_and_port(url: str, host: str) -> None:
    assert redacted_host(url) == host


# --- regions -----------------------------------------------------------------------------


def test_regions_parse_in_order() -> None:
    assert parse_regions("us-central1, us-west1") == ("us-central1", "us-west1")
    for bad in ("", "us-central1,", "US-West1", "a,a", "eu west"):
        with pytest.raises(ValueError, match="region"):
            parse_regions(bad)


def test_the_serving_region() -> None:
    regions = Regions(("us-central1", "us-west1"))
    assert regions.serving(None) == "us-central1"
    assert regions.serving("") == "us-central1"
    assert regions.serving("us-west1") == "us-west1"
    # An unknown region is answered (409) by the default region.
    assert regions.serving("eu-west9") == "us-central1"
    assert regions.unknown("eu-west9") and not regions.unknown("us-west1")
    assert not regions.unknown(None) and not regions.unknown("")

    regions.set_default("us-west1")
    assert regions.serving(None) == "us-west1"
    assert regions.serving("us-central1") == "us-central1"
    with pytest.raises(ValueError, match="unknown region 'eu-west9'"):
        regions.set_default("eu-west9")
    regions.reset()
    assert regions.default == "us-central1"


def test_the_unknown_region_body() -> None:
    assert unknown_region_body("xx") == {
        "error": "region_error",
        "message": "Unknown region 'xx'",
        "requested_region": "xx",
    }


def test_ownership_is_checked_before_region() -> None:
    store = StreamStore(ttl_seconds=300, tombstone_seconds=60, clock=lambda: T0)
    stream = store.create("alice", region="us-west1")
    assert store.lookup(stream.id, "alice", "us-west1") is stream
    assert store.lookup(stream.id, "alice") is stream  # no region: admin and gateway
    with pytest.raises(WrongRegion) as wrong:
        store.keepalive(stream.id, "alice", "us-central1")
    assert wrong.value.expected == "us-west1"
    with pytest.raises(StreamNotFound):
        store.lookup(stream.id, "bob", "us-central1")
    with pytest.raises(WrongRegion):
        store.delete(stream.id, "alice", "us-central1")
    store.delete(stream.id, "alice", "us-west1")
    # A tombstone still belongs to its region; ended comes after.
    with pytest.raises(WrongRegion):
        store.keepalive(stream.id, "alice", "us-central1")
    with pytest.raises(StreamEnded):
        store.keepalive(stream.id, "alice", "us-west1")


# --- the pull's rules ---------------------------------------------------------------------


def test_backoff_doubles_from_one_second_to_thirty() -> None:
    backoff = Backoff()
    assert [backoff.next() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    backoff.reset()
    assert backoff.next() == 1


def test_an_end_alone_does_not_end_the_stream() -> None:
    rule = EndRule()
    rule.connected(T0)
    assert rule.ended(T0 + 5_000) is False


def test_an_end_soon_after_a_reconnect_that_followed_an_end_ends_the_stream() -> None:
    rule = EndRule()
    rule.connected(T0)
    assert rule.ended(T0 + 60_000) is False
    rule.connected(T0 + 61_000)
    assert rule.ended(T0 + 61_000 + 30_000) is True


def test_an_end_long_after_the_reconnect_starts_afresh() -> None:
    rule = EndRule()
    rule.connected(T0)
    assert rule.ended(T0 + 1_000) is False
    rule.connected(T0 + 2_000)
    assert rule.ended(T0 + 2_000 + 30_001) is False  # lived past the window: a first end
    rule.connected(T0 + 40_000)
    assert rule.ended(T0 + 45_000) is True


def test_drops_between_do_not_reset_the_rule() -> None:
    rule = EndRule()
    rule.connected(T0)
    assert rule.ended(T0 + 1_000) is False
    rule.connected(T0 + 2_000)  # the reconnect after the end
    rule.connected(T0 + 10_000)  # after a drop (no end): still counts from T0 + 2 s
    assert rule.ended(T0 + 31_000) is True


def test_last_pull_is_written_at_most_once_a_second() -> None:
    now = [T0]
    store = StreamStore(ttl_seconds=300, tombstone_seconds=60, clock=lambda: now[0])
    stream = store.create("alice", source=SourceInfo("rtsp", "cam.example:554"))
    assert stream.last_pull_ms is None
    for offset in (0, 400, 999, 1000, 1500, 2100):
        store.record_pull(stream.id, 1, T0 + offset)
    assert stream.last_pull_ms == T0 + 2100  # written at 0, 1000, then 2100
    store.record_pull(stream.id, 1, T0 + 2100 + 999)
    assert stream.last_pull_ms == T0 + 2100
    snapshot = stream.frames(T0 + 3099)
    assert snapshot.last_frame_index == 6
    assert snapshot.last_frame_at_ms == T0 + 3099


def test_a_source_end_ends_the_stream_for_observers() -> None:
    store = StreamStore(ttl_seconds=300, tombstone_seconds=60, clock=lambda: T0)
    stream = store.create("alice", source=SourceInfo("hls", "cdn.example"))
    store.end_source(stream.id)
    assert (stream.state, stream.end_reason) == ("ended", "source_ended")
    with pytest.raises(StreamEnded):
        store.end_source(stream.id)


# --- HLS -------------------------------------------------------------------------------------

LIVE = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:40
#EXTINF:2.000,
seg40.ts
#EXTINF:2.000,
seg41.ts
#EXTINF:1.500,
https://cdn2.example/seg42.ts
#EXTINF:2.000,
seg43.ts
"""


def test_a_live_playlist_is_joined_near_its_end() -> None:
    playlist = parse_playlist(LIVE, "https://u:p@cdn.example/cam/live.m3u8")
    assert isinstance(playlist, MediaPlaylist)
    assert not playlist.ended
    assert playlist.target_duration == 2
    assert [s.sequence for s in playlist.segments] == [40, 41, 42, 43]
    assert playlist.segments[0].uri == "https://u:p@cdn.example/cam/seg40.ts"
    assert playlist.segments[2].uri == "https://cdn2.example/seg42.ts"
    assert playlist.segments[2].duration == 1.5
    assert first_to_play(playlist) == 41
    assert reload_delay(playlist, True) == 2
    assert reload_delay(playlist, False) == 1


def test_a_finished_playlist_is_played_from_its_start() -> None:
    vod = parse_playlist(
        '#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MAP:URI="init.mp4"\n'
        "#EXTINF:1,\na.m4s\n#EXTINF:1,\nb.m4s\n#EXTINF:1,\nc.m4s\n#EXTINF:1,\nd.m4s\n"
        "#EXT-X-ENDLIST\n",
        "http://h.example/v/vod.m3u8",
    )
    assert isinstance(vod, MediaPlaylist)
    assert vod.ended
    assert first_to_play(vod) == 0
    assert vod.segments[3].init_uri == "http://h.example/v/init.mp4"


def test_a_multivariant_playlist_names_its_variants() -> None:
    master = parse_playlist(
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\nlow/index.m3u8\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=2000000\nhttps://other.example/hi.m3u8\n",
        "https://h.example/master.m3u8",
    )
    assert master == MultivariantPlaylist(
        ("https://h.example/low/index.m3u8", "https://other.example/hi.m3u8")
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<html>502</html>",
        "#EXTM3U\n#EXTINF:1,\na.ts\n",  # no target duration
        "#EXTM3U\n#EXT-X-TARGETDURATION:x\n",
        '#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-KEY:METHOD=AES-128,URI="k"\n',
    ],
)
def test_unplayable_playlists(text: str) -> None:
    with pytest.raises(PlaylistError):
        parse_playlist(text, "http://h.example/x.m3u8")


def test_the_pacer_plays_at_media_rate_and_reanchors() -> None:
    now = [100.0]
    pacer = Pacer(clock=lambda: now[0])
    assert pacer.delay(10.0) == 0  # anchored
    assert pacer.delay(10.5) == pytest.approx(0.5)
    now[0] = 100.5
    assert pacer.delay(11.0) == pytest.approx(0.5)
    now[0] = 103.0  # two seconds late: re-anchored, no burst to catch up
    assert pacer.delay(11.1) == 0
    assert pacer.delay(11.2) == pytest.approx(0.1)
    assert pacer.delay(2.0) == 0  # timestamps went back (a discontinuity)
    assert pacer.delay(500.0) == 0  # a jump far ahead


# --- 429 headers -------------------------------------------------------------------------


def test_rate_limit_headers() -> None:
    assert rate_limit_headers(1, limit=5, remaining=0) == {
        "Retry-After": "1",
        "x-ratelimit-limit": "5",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "1",
    }
    assert rate_limit_headers(2.5, limit=3, remaining=0)["x-ratelimit-reset"] == "3"
    assert rate_limit_headers(2.5, limit=3, remaining=1, reset=60)["x-ratelimit-reset"] == "60"


def test_fault_headers() -> None:
    assert Fault(status=429).headers() == rate_limit_headers(1, limit=5, remaining=0)
    custom = Fault(
        status=429, retry_after=4, ratelimit_limit=100, ratelimit_remaining=2, ratelimit_reset=9
    ).headers()
    assert custom == {
        "Retry-After": "4",
        "x-ratelimit-limit": "100",
        "x-ratelimit-remaining": "2",
        "x-ratelimit-reset": "9",
    }
    assert Fault(status=503).headers() == {}
    assert Fault(status=503, retry_after=2).headers() == {"Retry-After": "2"}
