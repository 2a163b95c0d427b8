"""Contract tests: camera sources the emulator pulls itself (v1beta), from real sources.

A GStreamer RTSP camera (with credentials) and PyAV-made HLS streams on loopback, pulled by
a real emulator process (`--allow-private-sources`, 3 s connect window): frames and
`last_pull` that really advance, outages that freeze `last_pull` without ending the stream,
reconnection, a source that ends twice, refusals, and pulls that stop when their stream
ends. The source URL (with its password) must never appear in an answer, an admin
document or the emulator's log.
"""

from __future__ import annotations

import functools
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import av
import httpx
import numpy as np
import pytest

from fixtures.emulator import PULL_CONNECT_TIMEOUT, EmulatorFactory
from overshoot_localstack.emulator import EmulatorProcess
from overshoot_localstack.media import HlsSource
from overshoot_localstack.rtsp import RtspServer, free_port

pytestmark = [pytest.mark.contract, pytest.mark.timeout(120)]

KEY = "ovs-pull-owner"
OTHER = "ovs-pull-other"
USER = "camera-user"
PASSWORD = "pull-s3cret-Pa55"
CONNECT_ERROR = {"detail": "Could not connect to source url (check reachability and credentials)"}
NOT_PUBLIC = {"detail": "Source url must resolve to a public address"}

T = TypeVar("T")


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `probe` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.1)


class Api:
    """The v1beta stream endpoints, remembering every answer body (to search for secrets)."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        self.http = httpx.Client(base_url=emulator.url + "/v1beta", timeout=60)
        self.bodies: list[str] = []

    def call(self, method: str, path: str, key: str = KEY, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, headers=auth(key), **kwargs)
        self.bodies.append(response.text)
        return response

    def create(self, source: dict[str, Any], key: str = KEY) -> httpx.Response:
        return self.call("POST", "/streams", key, json={"source": source})

    def get(self, stream_id: str) -> dict[str, Any]:
        response = self.call("GET", f"/streams/{stream_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def api(pulling_emulator: EmulatorProcess) -> Iterator[Api]:
    client = Api(pulling_emulator)
    yield client
    client.close()


def with_credentials(camera: RtspServer, password: str = PASSWORD) -> str:
    return f"rtsp://{USER}:{password}@{camera.address}:{camera.port}{camera.path}"


def client_connections(port: int) -> int:
    """Established TCP connections from this machine to loopback `port` (the client side)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if int(remote.rsplit(":", 1)[1], 16) == port and state == "01":
            count += 1
    return count


def pulled(api: Api, source: dict[str, Any]) -> str:
    response = api.create(source)
    assert response.status_code == 201, response.text
    stream_id: str = response.json()["id"]
    return stream_id


def last_pull_after(api: Api, stream_id: str, after: int | None, timeout: float = 15) -> int:
    def newer() -> int | None:
        value: int | None = api.get(stream_id)["last_pull"]
        return value if value is not None and (after is None or value > after) else None

    return wait_for(newer, timeout, f"last_pull of {stream_id} past {after}")


def pull_of(emulator: EmulatorProcess, stream_id: str) -> dict[str, Any] | None:
    pulls: list[dict[str, Any]] = emulator.admin.pulls()["pulls"]
    return next((p for p in pulls if p["stream_id"] == stream_id), None)


# --- RTSP ---------------------------------------------------------------------------------


def test_an_rtsp_camera_with_credentials_is_pulled_and_the_url_never_shows(
    pulling_emulator: EmulatorProcess,
    pulling_emulator_log: Path,
    api: Api,
    rtsp_camera: Callable[..., RtspServer],
) -> None:
    camera = rtsp_camera(username=USER, password=PASSWORD, fps=15)
    url = with_credentials(camera)
    created = api.create({"type": "rtsp", "url": url})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "state", "publish", "source", "expires_at_ms", "ttl_seconds"}
    assert body["state"] == "active"
    assert body["publish"] is None
    assert body["source"] == {"type": "rtsp"}
    assert body["ttl_seconds"] == 300
    stream_id = body["id"]

    first = last_pull_after(api, stream_id, None)
    second = last_pull_after(api, stream_id, first)
    assert second - first >= 1000  # written at most once a second
    state = api.get(stream_id)
    assert state["state"] == "active"
    assert state["source"] == {"type": "rtsp"}
    assert state["last_frame_at_ms"] >= state["last_pull"]
    # last_pull lags the newest frame by up to a second (documented).
    assert state["last_frame_at_ms"] - state["last_pull"] <= 1000
    index = state["last_frame_index"]
    assert index is not None and state["recent_fps"] > 0
    wait_for(
        lambda: api.get(stream_id)["last_frame_index"] > index + 15,
        10,
        "frame index advancing",
    )

    keepalive = api.call("POST", f"/streams/{stream_id}/keepalive")
    assert keepalive.status_code == 200
    assert set(keepalive.json()) == {
        "id",
        "expires_at_ms",
        "ttl_seconds",
        "publish",
        "stream_time_ms",
    }
    assert keepalive.json()["publish"] is None

    [listed] = pulling_emulator.admin.streams()
    assert listed["source_type"] == "rtsp"
    assert listed["source_host"] == f"127.0.0.1:{camera.port}"
    assert listed["last_pull"] is not None
    pulls = pulling_emulator.admin.pulls()
    assert pulls["pulls"][0]["state"] == "pulling"

    for text in [*api.bodies, str(pulling_emulator.admin.streams()), str(pulls)]:
        assert PASSWORD not in text
        assert url not in text
    log = pulling_emulator_log.read_text()
    assert "Started pulling rtsp source" in log
    assert PASSWORD not in log
    assert USER not in log


def test_wrong_credentials_are_refused_after_the_connect_window(
    pulling_emulator: EmulatorProcess,
    pulling_emulator_log: Path,
    api: Api,
    rtsp_camera: Callable[..., RtspServer],
) -> None:
    camera = rtsp_camera(username=USER, password=PASSWORD)
    started = time.monotonic()
    response = api.create({"type": "rtsp", "url": with_credentials(camera, "not-the-Pa55")})
    elapsed = time.monotonic() - started
    assert response.status_code == 422
    assert response.json() == CONNECT_ERROR
    assert PULL_CONNECT_TIMEOUT - 0.5 <= elapsed < PULL_CONNECT_TIMEOUT + 5
    assert pulling_emulator.admin.streams() == []
    assert "not-the-Pa55" not in pulling_emulator_log.read_text()


def test_a_closed_port_is_refused_after_the_window_and_no_stream_exists(
    pulling_emulator: EmulatorProcess, api: Api
) -> None:
    started = time.monotonic()
    response = api.create(
        {"type": "rtsp", "url": f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/stream1"}
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 422
    assert response.json() == CONNECT_ERROR
    assert PULL_CONNECT_TIMEOUT - 0.5 <= elapsed < PULL_CONNECT_TIMEOUT + 5
    assert pulling_emulator.admin.streams() == []
    assert pulling_emulator.admin.pulls() == {"pulls": [], "connecting": 0, "reader_threads": 0}


def test_a_camera_outage_freezes_last_pull_and_the_stream_survives(
    pulling_emulator: EmulatorProcess, api: Api, rtsp_camera: Callable[..., RtspServer]
) -> None:
    camera = rtsp_camera()
    stream_id = pulled(api, {"type": "rtsp", "url": camera.url})
    before = last_pull_after(api, stream_id, None)
    camera.kill()

    # Positive signals that the outage is seen and lasts: the pull reconnects, and at
    # least one reconnect attempt has failed against the dead camera.
    wait_for(
        lambda: (p := pull_of(pulling_emulator, stream_id)) and p["state"] == "reconnecting",
        10,
        "the pull reconnecting",
    )
    frozen = api.get(stream_id)["last_pull"]
    assert frozen >= before
    wait_for(
        lambda: (p := pull_of(pulling_emulator, stream_id)) and p["connections"] >= 2,
        10,
        "a failed reconnect attempt",
    )
    during = api.get(stream_id)
    assert during["state"] == "active"
    assert during["end_reason"] is None
    assert during["last_pull"] == frozen

    camera.start()
    after = last_pull_after(api, stream_id, frozen, timeout=30)
    assert after > frozen
    assert api.get(stream_id)["state"] == "active"
    assert pull_of(pulling_emulator, stream_id)["state"] == "pulling"  # type: ignore[index]


def test_delete_stops_the_pull(
    pulling_emulator: EmulatorProcess, api: Api, rtsp_camera: Callable[..., RtspServer]
) -> None:
    camera = rtsp_camera()
    stream_id = pulled(api, {"type": "rtsp", "url": camera.url})
    last_pull_after(api, stream_id, None)
    assert client_connections(camera.port) == 1

    assert api.call("DELETE", f"/streams/{stream_id}").status_code == 200
    started = time.monotonic()
    # The camera sees its client go: no established connection from our side any more.
    wait_for(lambda: client_connections(camera.port) == 0, 5, "the pull's connection closed")
    assert time.monotonic() - started < 3
    wait_for(
        lambda: pulling_emulator.admin.pulls()["reader_threads"] == 0, 5, "the reader thread gone"
    )
    assert pulling_emulator.admin.pulls()["pulls"] == []
    ended = api.get(stream_id)
    assert (ended["state"], ended["end_reason"]) == ("ended", "deleted")


def test_reaping_stops_the_pull(
    pulling_emulator: EmulatorProcess, api: Api, rtsp_camera: Callable[..., RtspServer]
) -> None:
    camera = rtsp_camera()
    stream_id = pulled(api, {"type": "rtsp", "url": camera.url})
    last_pull_after(api, stream_id, None)
    pulling_emulator.admin.reap(stream_id)
    wait_for(lambda: client_connections(camera.port) == 0, 5, "the pull's connection closed")
    assert pulling_emulator.admin.pulls()["pulls"] == []


def test_expiry_stops_the_pull(
    fresh_emulator: EmulatorFactory, rtsp_camera: Callable[..., RtspServer]
) -> None:
    emulator = fresh_emulator(ttl_seconds=2, allow_private_sources=True)
    camera = rtsp_camera()
    with httpx.Client(base_url=emulator.url + "/v1beta", timeout=30) as http:
        created = http.post(
            "/streams", json={"source": {"type": "rtsp", "url": camera.url}}, headers=auth()
        )
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        wait_for(lambda: client_connections(camera.port) == 1, 5, "the pull connected")
        wait_for(
            lambda: (
                http.get(f"/streams/{stream_id}", headers=auth()).json()["end_reason"] == "expired"
            ),
            10,
            "the lease running out",
        )
    wait_for(lambda: client_connections(camera.port) == 0, 5, "the pull's connection closed")
    assert emulator.admin.pulls()["pulls"] == []


def test_the_process_exits_cleanly_on_sigterm_while_pulling(
    tmp_path: Path,
    rtsp_camera: Callable[..., RtspServer],
    hls_source: Callable[..., HlsSource],
) -> None:
    camera = rtsp_camera()
    hls = hls_source()
    log_path = tmp_path / "stderr.log"
    answers: list[httpx.Response] = []
    with log_path.open("w") as log:
        emulator = EmulatorProcess(allow_private_sources=True, stderr=log).start()
        try:
            with httpx.Client(base_url=emulator.url + "/v1beta", timeout=30) as http:
                for source in (
                    {"type": "rtsp", "url": camera.url},
                    {"type": "hls", "url": hls.url},
                ):
                    response = http.post("/streams", json={"source": source}, headers=auth())
                    assert response.status_code == 201, response.text

                # A create still inside its connect window (nothing listens there).
                def pending_create() -> None:
                    closed = {"type": "rtsp", "url": f"rtsp://127.0.0.1:{free_port()}/x"}
                    answers.append(http.post("/streams", json={"source": closed}, headers=auth()))

                waiting = threading.Thread(target=pending_create)
                waiting.start()
                wait_for(lambda: emulator.admin.pulls()["connecting"] == 1, 5, "a pending create")
                assert len(emulator.admin.pulls()["pulls"]) == 2
                started = time.monotonic()
                code = emulator.stop(timeout=15)
                stopped_in = time.monotonic() - started
                waiting.join(10)
        finally:
            emulator.stop()
    assert code == 0
    assert stopped_in < 5
    # The pending create was answered, not cut off: the service is going away (503).
    [answer] = answers
    assert answer.status_code == 503
    log_text = log_path.read_text()
    assert "Stopped emulator" in log_text
    for trouble in ("Traceback", "ERROR", "Task was destroyed", "never retrieved"):
        assert trouble not in log_text


# --- HLS ----------------------------------------------------------------------------------


def test_a_live_hls_source_is_pulled_at_its_rate(
    api: Api, hls_source: Callable[..., HlsSource]
) -> None:
    hls = hls_source(fps=15)
    created = api.create({"type": "hls", "url": hls.url})
    assert created.status_code == 201, created.text
    assert created.json()["source"] == {"type": "hls"}
    assert created.json()["publish"] is None
    stream_id = created.json()["id"]
    first = last_pull_after(api, stream_id, None)
    last_pull_after(api, stream_id, first + 1000)
    state = api.get(stream_id)
    # Played out at the source's rate (15 fps), not in per-segment bursts.
    assert 10 <= state["recent_fps"] <= 20, state


class VodHls:
    """A finished (VOD) HLS playlist, `#EXT-X-ENDLIST` included, served on loopback."""

    def __init__(self, directory: Path, *, seconds: int = 2, fps: int = 15) -> None:
        self.directory = directory
        out: Any = av.open(
            str(directory / "vod.m3u8"),
            "w",
            format="hls",
            options={"hls_time": "1", "hls_playlist_type": "vod", "hls_list_size": "0"},
        )
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.codec_context.options = {"g": str(fps), "bf": "0", "preset": "ultrafast"}
        for index in range(seconds * fps):
            picture = np.full((270, 320), (index * 8) % 256, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, "yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        out.close()
        assert "#EXT-X-ENDLIST" in (directory / "vod.m3u8").read_text()

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://user:{PASSWORD}@127.0.0.1:{self.server.server_address[1]}/vod.m3u8"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vod_hls(tmp_path: Path) -> Iterator[VodHls]:
    vod = VodHls(tmp_path)
    yield vod
    vod.close()


def test_an_hls_source_that_ends_twice_ends_the_stream(
    pulling_emulator: EmulatorProcess, pulling_emulator_log: Path, api: Api, vod_hls: VodHls
) -> None:
    stream_id = pulled(api, {"type": "hls", "url": vod_hls.url})
    # Two seconds of video, a reconnect one second later, two more seconds: then the end.
    ended = wait_for(
        lambda: (body := api.get(stream_id))["state"] == "ended" and body,
        30,
        "the stream ending with its source",
    )
    assert ended["end_reason"] == "source_ended"
    assert ended["last_pull"] is not None
    # Both plays were booked: 2 x 30 frames.
    assert ended["last_frame_index"] >= 2 * 30 - 1 - 5
    assert pulling_emulator.admin.pulls()["pulls"] == []
    assert api.call("POST", f"/streams/{stream_id}/keepalive").status_code == 404
    assert PASSWORD not in pulling_emulator_log.read_text()
    assert all(PASSWORD not in text for text in api.bodies)


# --- refusals and shapes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://u:p@127.0.0.1:554/stream1",
        "rtsp://u:p@localhost/stream1",
        "rtsp://10.1.2.3/stream1",
        "rtsps://192.168.1.20:322/stream1",
        "rtsp://169.254.169.254/latest",
        "rtsp://[::1]:554/stream1",
        "https://100.64.0.1/live.m3u8",
        "http://0.0.0.0/live.m3u8",
    ],
)
def test_a_source_on_a_non_public_address_is_refused_at_once(
    emulator_reset: EmulatorProcess, url: str
) -> None:
    source_type = "rtsp" if url.startswith("rtsp") else "hls"
    with httpx.Client(base_url=emulator_reset.url + "/v1beta", timeout=10) as http:
        started = time.monotonic()
        response = http.post(
            "/streams", json={"source": {"type": source_type, "url": url}}, headers=auth()
        )
    assert time.monotonic() - started < 1.5
    assert response.status_code == 422
    assert response.json() == NOT_PUBLIC
    assert emulator_reset.admin.streams() == []


@pytest.mark.parametrize(
    ("source", "loc", "kind"),
    [
        (
            {"type": "ftp", "url": f"ftp://u:{PASSWORD}@camera.example/x"},
            ["body", "source", "type"],
            "literal_error",
        ),
        (
            {"type": "rtsp", "url": f"http://u:{PASSWORD}@camera.example/x"},
            ["body", "source", "url"],
            "value_error",
        ),
        (
            {"type": "hls", "url": f"rtsp://u:{PASSWORD}@camera.example/x"},
            ["body", "source", "url"],
            "value_error",
        ),
        (
            {"type": "rtsp", "url": f"rtsp://u:{PASSWORD}@/x"},
            ["body", "source", "url"],
            "value_error",
        ),
        (
            {"type": "rtsp", "url": f"rtsp://u:{PASSWORD}@camera.example:port/x"},
            ["body", "source", "url"],
            "value_error",
        ),
        ({"type": "rtsp"}, ["body", "source", "url"], "missing"),
        ({"type": "rtsp", "url": 554}, ["body", "source", "url"], "string_type"),
        (f"rtsp://u:{PASSWORD}@camera.example/x", ["body", "source"], "model_type"),
    ],
)
def test_a_malformed_source_is_a_fastapi_422_without_the_url(
    emulator: EmulatorProcess, source: object, loc: list[str], kind: str
) -> None:
    with httpx.Client(base_url=emulator.url + "/v1beta", timeout=10) as http:
        response = http.post("/streams", json={"source": source}, headers=auth(OTHER))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert set(error) == {"loc", "msg", "type"}
    assert error["loc"] == loc
    assert error["type"] == kind
    assert isinstance(error["msg"], str) and error["msg"]
    assert PASSWORD not in response.text
    assert "camera.example" not in response.text


def test_v1_ignores_a_source_and_makes_a_client_published_stream(
    emulator: EmulatorProcess, rtsp_camera: Callable[..., RtspServer]
) -> None:
    with httpx.Client(base_url=emulator.url, timeout=10) as http:
        response = http.post(
            "/v1/streams",
            json={"source": {"type": "rtsp", "url": "rtsp://u:p@127.0.0.1:9/stream1"}},
            headers=auth(OTHER),
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == {"id", "state", "publish", "expires_at_ms", "ttl_seconds"}
        assert body["publish"]["type"] == "livekit"
        state = http.get(f"/v1/streams/{body['id']}", headers=auth(OTHER)).json()
        assert state["source"] is None
        assert state["last_pull"] is None
        keepalive = http.post(f"/v1/streams/{body['id']}/keepalive", headers=auth(OTHER))
        assert keepalive.json()["publish"]["token"]


def test_a_client_published_stream_has_null_pull_fields(emulator: EmulatorProcess) -> None:
    with httpx.Client(base_url=emulator.url + "/v1beta", timeout=10) as http:
        for body in ({}, {"source": None}):
            created = http.post("/streams", json=body, headers=auth(OTHER))
            assert created.status_code == 201
            assert created.json()["publish"]["type"] == "livekit"
            state = http.get(f"/streams/{created.json()['id']}", headers=auth(OTHER)).json()
            assert "last_pull" in state and state["last_pull"] is None
            assert "source" in state and state["source"] is None


def test_a_capped_key_is_refused_before_any_connect(
    pulling_emulator: EmulatorProcess, api: Api
) -> None:
    pulling_emulator.admin.set_limit(KEY, 0, retry_after=3)
    started = time.monotonic()
    # Nothing listens there: a connect attempt would take the whole window.
    response = api.create({"type": "rtsp", "url": f"rtsp://127.0.0.1:{free_port()}/x"})
    assert time.monotonic() - started < 1.5
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"


def test_with_livekit_settings_only_the_pull_counts_a_pulled_stream(
    tmp_path: Path, fresh_emulator: EmulatorFactory, rtsp_camera: Callable[..., RtspServer]
) -> None:
    # Nothing listens at the LiveKit URL: the republisher keeps failing to join, which
    # must not disturb the pull; the media gateway stays out of the pulled stream's room.
    log_path = tmp_path / "stderr.log"
    with log_path.open("w") as log:
        emulator = fresh_emulator(
            livekit_url="ws://127.0.0.1:9",
            livekit_api_key="APIpulltest",
            livekit_api_secret="pull-test-secret-that-is-long-enough-for-hs256",
            allow_private_sources=True,
            stderr=log,
        )
    camera = rtsp_camera(username=USER, password=PASSWORD)
    with httpx.Client(base_url=emulator.url + "/v1beta", timeout=30) as http:
        created = http.post(
            "/streams",
            json={"source": {"type": "rtsp", "url": with_credentials(camera)}},
            headers=auth(),
        )
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        published = http.post("/streams", json={}, headers=auth()).json()["id"]

        def frames() -> int | None:
            index: int | None = http.get(f"/streams/{stream_id}", headers=auth()).json()[
                "last_frame_index"
            ]
            return index if index is not None and index > 30 else None

        wait_for(frames, 15, "pulled frames")
        gateway = httpx.get(emulator.url + "/_emulator/gateway", timeout=10).json()
        assert published in gateway
        assert stream_id not in gateway
    wait_for(lambda: "Could not join room" in log_path.read_text(), 15, "the republisher trying")
    assert PASSWORD not in log_path.read_text()
