"""Contract tests of the admin surface (`/_emulator/...`) on a real process: caps, every
kind of fault, call counts, fake frames, listing and reset."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from overshoot_localstack.emulator import EmulatorProcess

pytestmark = pytest.mark.contract

ALICE = "ovs-admin-alice"
BOB = "ovs-admin-bob"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def emu(emulator_reset: EmulatorProcess) -> EmulatorProcess:
    return emulator_reset


@pytest.fixture
def http(emu: EmulatorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.api_url, timeout=10) as client:
        yield client


def create(http: httpx.Client, key: str = ALICE) -> str:
    response = http.post("/streams", json={}, headers=auth(key))
    assert response.status_code == 201, response.text
    stream_id: str = response.json()["id"]
    return stream_id


# --- limits -------------------------------------------------------------------------


def test_a_cap_answers_429_with_retry_after(emu: EmulatorProcess, http: httpx.Client) -> None:
    answer = emu.admin.set_limit(ALICE, 2, retry_after=7)
    assert answer["owner"].startswith("sha256:")
    assert ALICE not in str(answer)
    first = create(http)
    create(http)
    refused = http.post("/streams", json={}, headers=auth(ALICE))
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "7"
    assert isinstance(refused.json()["detail"], str)
    create(http, BOB)  # only Alice is capped

    assert http.delete(f"/streams/{first}", headers=auth(ALICE)).status_code == 200
    create(http)
    emu.admin.set_limit(ALICE, None)
    create(http)


def test_retry_after_defaults_to_one_second(emu: EmulatorProcess, http: httpx.Client) -> None:
    emu.admin.set_limit(ALICE, 0)
    refused = http.post("/streams", json={}, headers=auth(ALICE))
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"


def test_a_cap_answers_rate_limit_headers(emu: EmulatorProcess, http: httpx.Client) -> None:
    emu.admin.set_limit(ALICE, 2, retry_after=2.5)
    create(http)
    create(http)
    refused = http.post("/streams", json={}, headers=auth(ALICE))
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "2.5"
    assert refused.headers["x-ratelimit-limit"] == "2"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-reset"] == "3"  # whole seconds, rounded up


def test_a_429_fault_answers_rate_limit_headers(emu: EmulatorProcess, http: httpx.Client) -> None:
    emu.admin.fault(status=429, endpoints=["keepalive"])
    emu.admin.fault(
        status=429,
        endpoints=["keepalive"],
        retry_after=4,
        ratelimit_limit=100,
        ratelimit_remaining=7,
        ratelimit_reset=42,
    )
    stream_id = create(http)
    first = http.post(f"/streams/{stream_id}/keepalive", headers=auth(ALICE))
    second = http.post(f"/streams/{stream_id}/keepalive", headers=auth(ALICE))
    limits = ("Retry-After", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
    assert first.status_code == second.status_code == 429
    assert [first.headers[name] for name in limits] == ["1", "5", "0", "1"]
    assert [second.headers[name] for name in limits] == ["4", "100", "7", "42"]
    assert http.post(f"/streams/{stream_id}/keepalive", headers=auth(ALICE)).status_code == 200


# --- faults -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 402, 403, 429, 500, 502, 503])
def test_a_status_fault_answers_once_then_is_used_up(
    emu: EmulatorProcess, http: httpx.Client, status: int
) -> None:
    emu.admin.fault(status=status, endpoints=["create"])
    faulted = http.post("/streams", json={}, headers=auth(ALICE))
    assert faulted.status_code == status
    assert faulted.headers["Content-Type"].startswith("application/json")
    assert isinstance(faulted.json()["detail"], str)
    # Documented for v1beta: only a 429 carries retry-after (then always; "currently 1").
    assert faulted.headers.get("Retry-After") == ("1" if status == 429 else None)
    create(http)


def test_a_fault_can_carry_retry_after(emu: EmulatorProcess, http: httpx.Client) -> None:
    emu.admin.fault(status=503, retry_after=2)
    response = http.post("/streams", json={}, headers=auth(ALICE))
    assert (response.status_code, response.headers["Retry-After"]) == (503, "2")


def test_a_fault_lasts_count_calls_on_its_endpoints_only(
    emu: EmulatorProcess, http: httpx.Client
) -> None:
    stream_id = create(http)
    emu.admin.fault(status=503, count=2, endpoints=["keepalive"])
    assert http.get(f"/streams/{stream_id}", headers=auth(ALICE)).status_code == 200
    for _ in range(2):
        assert http.post(f"/streams/{stream_id}/keepalive", headers=auth(ALICE)).status_code == 503
    assert http.post(f"/streams/{stream_id}/keepalive", headers=auth(ALICE)).status_code == 200


def test_a_fault_can_target_viewer_tokens(emu: EmulatorProcess, http: httpx.Client) -> None:
    stream_id = create(http)
    emu.admin.fault(status=503, endpoints=["viewer_token"])
    assert http.get(f"/streams/{stream_id}", headers=auth(ALICE)).status_code == 200
    token = f"/streams/{stream_id}/viewer-token"
    assert http.post(token, headers=auth(ALICE)).status_code == 503
    assert http.post(token, headers=auth(ALICE)).status_code == 200
    assert emu.admin.calls(ALICE)["viewer_token"] == 2
    # A fault without endpoints covers viewer tokens too.
    emu.admin.fault(status=502)
    assert http.post(token, headers=auth(ALICE)).status_code == 502


def test_faults_queue_in_order(emu: EmulatorProcess, http: httpx.Client) -> None:
    emu.admin.fault(status=503)
    emu.admin.fault(status=402)
    codes = [http.post("/streams", json={}, headers=auth(ALICE)).status_code for _ in range(3)]
    assert codes == [503, 402, 201]


def test_a_fault_can_be_scoped_to_a_key(emu: EmulatorProcess, http: httpx.Client) -> None:
    emu.admin.fault(status=401, api_key=BOB)
    create(http, ALICE)
    assert http.post("/streams", json={}, headers=auth(BOB)).status_code == 401
    create(http, BOB)


def test_a_dropped_connection_sends_nothing(emu: EmulatorProcess, http: httpx.Client) -> None:
    emu.admin.fault(drop=True, endpoints=["create"])
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/streams", json={}, headers=auth(ALICE))
    create(http)


def test_latency_delays_a_normal_answer(emu: EmulatorProcess, http: httpx.Client) -> None:
    emu.admin.fault(latency_ms=400, endpoints=["create"])
    started = time.monotonic()
    create(http)
    assert time.monotonic() - started >= 0.4


def test_latency_then_an_error(emu: EmulatorProcess, http: httpx.Client) -> None:
    emu.admin.fault(latency_ms=300, status=502, endpoints=["create"])
    started = time.monotonic()
    assert http.post("/streams", json={}, headers=auth(ALICE)).status_code == 502
    assert time.monotonic() - started >= 0.3


def test_a_latency_fault_trips_a_client_timeout(emu: EmulatorProcess) -> None:
    emu.admin.fault(latency_ms=1500, endpoints=["create"])
    with (
        httpx.Client(base_url=emu.api_url, timeout=0.3) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post("/streams", json={}, headers=auth(ALICE))
    # The server still makes the stream once the latency is over (a lost create response).
    # Waiting for it also keeps it from appearing in the middle of a later test.
    deadline = time.monotonic() + 10
    while not emu.admin.streams():
        assert time.monotonic() < deadline, "the late create made no stream"
        time.sleep(0.05)


def test_a_proxy_error_page(emu: EmulatorProcess, http: httpx.Client) -> None:
    page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    emu.admin.fault(status=502, body=page, content_type="text/html")
    response = http.post("/streams", json={}, headers=auth(ALICE))
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text == page


def test_an_empty_answer(emu: EmulatorProcess, http: httpx.Client) -> None:
    emu.admin.fault(status=500, content_type="")
    response = http.post("/streams", json={}, headers=auth(ALICE))
    assert response.status_code == 500
    assert response.content == b""
    assert "Content-Type" not in response.headers


@pytest.mark.parametrize(
    "body",
    [
        '{"error": "validation_error", "message": "bad", "details": [{"field": "x"}]}',
        '{"detail": [{"loc": ["body"], "msg": "field required", "type": "missing"}]}',
    ],
)
def test_a_422_in_either_documented_shape(
    emu: EmulatorProcess, http: httpx.Client, body: str
) -> None:
    emu.admin.fault(status=422, body=body)
    response = http.post("/streams", json={}, headers=auth(ALICE))
    assert response.status_code == 422
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.text == body


def test_faults_can_be_cleared(emu: EmulatorProcess, http: httpx.Client) -> None:
    emu.admin.fault(status=503, count=10)
    emu.admin.clear_faults()
    create(http)


def test_a_fault_that_does_nothing_is_refused(emu: EmulatorProcess) -> None:
    with pytest.raises(httpx.HTTPStatusError) as refused:
        emu.admin.fault()
    assert refused.value.response.status_code == 422


# --- call counts ----------------------------------------------------------------------


def test_every_call_is_counted_per_key_and_endpoint(
    emu: EmulatorProcess, http: httpx.Client
) -> None:
    stream_id = create(http)
    http.get(f"/streams/{stream_id}", headers=auth(ALICE))
    http.get(f"/streams/{stream_id}", headers=auth(BOB))  # rejected: foreign
    emu.admin.fault(status=503, endpoints=["keepalive"])
    http.post(f"/streams/{stream_id}/keepalive", headers=auth(ALICE))  # faulted
    http.post(f"/streams/{stream_id}/keepalive", headers=auth(ALICE))
    http.delete(f"/streams/{stream_id}", headers=auth(ALICE))
    http.post("/streams", json={})  # no key at all

    http.post(f"/streams/{stream_id}/viewer-token", headers=auth(ALICE))  # ended: 404

    assert emu.admin.calls(ALICE) == {
        "create": 1,
        "get": 1,
        "keepalive": 2,
        "delete": 1,
        "viewer_token": 1,
    }
    assert emu.admin.calls(BOB) == {
        "create": 0,
        "get": 1,
        "keepalive": 0,
        "delete": 0,
        "viewer_token": 0,
    }
    everything = emu.admin.calls()
    assert set(everything) == {"create", "get", "keepalive", "delete", "viewer_token"}
    assert everything["create"] == {
        next(iter(everything["delete"])): 1,
        "anonymous": 1,
    }
    assert all(name.startswith("sha256:") for name in everything["get"])
    with httpx.Client(base_url=emu.url) as admin:
        assert admin.get("/_emulator/calls").json()["total"] == 8

    emu.admin.reset_calls()
    assert set(emu.admin.calls(ALICE).values()) == {0}


# --- fake frames, listing, reset ---------------------------------------------------------


def test_frames_fill_the_frame_fields(emu: EmulatorProcess, http: httpx.Client) -> None:
    stream_id = create(http)
    answer = emu.admin.frames(stream_id, count=50, fps=25)
    assert answer["last_frame_index"] == 49
    body = http.get(f"/streams/{stream_id}", headers=auth(ALICE)).json()
    now_ms = time.time() * 1000
    assert body["last_frame_index"] == 49
    assert body["last_frame_at_ms"] == pytest.approx(now_ms, abs=2_000)
    assert body["first_frame_at_ms"] == body["last_frame_at_ms"] - 1_960
    assert body["stream_time_ms"] == 1_960
    assert body["recent_fps"] == pytest.approx(25, rel=0.1)
    assert body["retained_frame_count"] == 50
    assert body["evicted_frame_count"] == 0
    assert body["first_available_frame_index"] == 0
    assert body["first_available_frame_at_ms"] == body["first_frame_at_ms"]

    emu.admin.frames(stream_id, count=10, fps=25)
    body = http.get(f"/streams/{stream_id}", headers=auth(ALICE)).json()
    assert body["last_frame_index"] == 59
    keepalive = http.post(f"/streams/{stream_id}/keepalive", headers=auth(ALICE)).json()
    assert keepalive["stream_time_ms"] == body["stream_time_ms"]


def test_frames_for_ended_or_unknown_streams(emu: EmulatorProcess, http: httpx.Client) -> None:
    stream_id = create(http)
    http.delete(f"/streams/{stream_id}", headers=auth(ALICE))
    with pytest.raises(httpx.HTTPStatusError) as ended:
        emu.admin.frames(stream_id, count=1)
    assert ended.value.response.status_code == 409
    with pytest.raises(httpx.HTTPStatusError) as unknown:
        emu.admin.frames("00000000-0000-4000-8000-000000000000", count=1)
    assert unknown.value.response.status_code == 404


def test_listing_shows_owner_room_and_state(emu: EmulatorProcess, http: httpx.Client) -> None:
    kept = create(http)
    gone = create(http, BOB)
    http.post(f"/streams/{kept}/keepalive", headers=auth(ALICE))
    http.delete(f"/streams/{gone}", headers=auth(BOB))

    streams = {s["id"]: s for s in emu.admin.streams()}
    assert set(streams) == {kept, gone}
    assert streams[kept]["room"] == f"overshoot-{kept}"
    assert streams[kept]["keepalives"] == 1
    assert streams[kept]["owner"] != streams[gone]["owner"]
    assert streams[gone]["end_reason"] == "deleted"
    assert [s["id"] for s in emu.admin.streams(state="active")] == [kept]
    assert [s["id"] for s in emu.admin.streams(state="ended")] == [gone]
    assert ALICE not in str(streams) and BOB not in str(streams)


def test_reset_clears_streams_faults_limits_and_counts(
    emu: EmulatorProcess, http: httpx.Client
) -> None:
    create(http)
    emu.admin.set_limit(ALICE, 1)
    emu.admin.fault(status=503, count=5, endpoints=["get"])
    emu.admin.reset()
    assert emu.admin.streams() == []
    assert emu.admin.calls(ALICE)["create"] == 0
    first = create(http)
    create(http)  # no limit any more
    assert http.get(f"/streams/{first}", headers=auth(ALICE)).status_code == 200


async def test_async_admin_helpers(emu: EmulatorProcess) -> None:
    async with (
        httpx.AsyncClient(base_url=emu.api_url, timeout=10) as client,
        emu.async_admin() as admin,
    ):
        created = await client.post("/streams", json={}, headers=auth(ALICE))
        stream_id = created.json()["id"]
        await admin.frames(stream_id, count=5, fps=5)
        [listed] = await admin.streams(state="active")
        assert listed["last_frame_index"] == 4
        await admin.reap(stream_id)
        assert (await admin.calls(ALICE))["create"] == 1
