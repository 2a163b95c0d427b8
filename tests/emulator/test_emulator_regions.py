"""Contract tests: regions (v1beta) on a real process serving us-central1 and us-west1.

Every answer of a stream endpoint names its serving region; a stream lives in the region
that created it, and a request for it served by another region gets 409 `region_error`;
an unknown region is a 409 too; another key's stream stays 404 whatever the region; the
default region moves at run time, as geo-routing moves a client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from overshoot_localstack.emulator import EmulatorProcess

pytestmark = pytest.mark.contract

ALICE = "ovs-region-alice"
BOB = "ovs-region-bob"
CENTRAL, WEST = "us-central1", "us-west1"
PREFIXES = ["/v1", "/v1beta"]


@pytest.fixture(scope="module")
def regional() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(regions=[CENTRAL, WEST], api_keys=[ALICE, BOB]) as process:
        yield process


@pytest.fixture
def emu(regional: EmulatorProcess) -> EmulatorProcess:
    regional.admin.reset()  # also moves the default region back to the first
    return regional


@pytest.fixture(params=PREFIXES)
def http(request: pytest.FixtureRequest, emu: EmulatorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url + request.param, timeout=10) as client:
        yield client


def headers(key: str = ALICE, region: str | None = None) -> dict[str, str]:
    sent = {"Authorization": f"Bearer {key}"}
    if region is not None:
        sent["X-Overshoot-Region"] = region
    return sent


def create(http: httpx.Client, region: str | None = None, key: str = ALICE) -> str:
    response = http.post("/streams", json={}, headers=headers(key, region))
    assert response.status_code == 201, response.text
    assert response.headers["X-Overshoot-Region"] == (region or CENTRAL)
    stream_id: str = response.json()["id"]
    return stream_id


def calls(stream_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/streams/{stream_id}"),
        ("POST", f"/streams/{stream_id}/keepalive"),
        ("POST", f"/streams/{stream_id}/viewer-token"),
        ("DELETE", f"/streams/{stream_id}"),
    ]


def test_every_answer_names_its_serving_region(emu: EmulatorProcess, http: httpx.Client) -> None:
    stream_id = create(http)
    west_id = create(http, WEST)
    emu.admin.set_limit(BOB, 0)
    emu.admin.fault(status=503, endpoints=["get"], count=1)
    answers = {
        "faulted": http.get(f"/streams/{stream_id}", headers=headers()),
        "get": http.get(f"/streams/{stream_id}", headers=headers()),
        "keepalive": http.post(f"/streams/{stream_id}/keepalive", headers=headers()),
        "viewer": http.post(f"/streams/{stream_id}/viewer-token", headers=headers()),
        "unauthenticated": http.get(f"/streams/{stream_id}"),
        "unknown": http.get("/streams/00000000-0000-4000-8000-000000000000", headers=headers()),
        "invalid": http.post("/streams", content=b"[1]", headers=headers()),
        "capped": http.post("/streams", json={}, headers=headers(BOB)),
        "wrong-region": http.get(f"/streams/{west_id}", headers=headers()),
        "unknown-region": http.get(f"/streams/{stream_id}", headers=headers(region="xx")),
        "no-route": http.get("/nothing-here", headers=headers()),
        "delete": http.delete(f"/streams/{stream_id}", headers=headers()),
    }
    codes = {name: answer.status_code for name, answer in answers.items()}
    assert codes == {
        "faulted": 503,
        "get": 200,
        "keepalive": 200,
        "viewer": 200,
        "unauthenticated": 401,
        "unknown": 404,
        "invalid": 422,
        "capped": 429,
        "wrong-region": 409,
        "unknown-region": 409,
        "no-route": 404,
        "delete": 200,
    }
    for name, answer in answers.items():
        assert answer.headers.get("X-Overshoot-Region") == CENTRAL, name

    west = http.get(f"/streams/{west_id}", headers=headers(region=WEST))
    assert west.status_code == 200
    assert west.headers["X-Overshoot-Region"] == WEST
    unauthenticated = http.get(f"/streams/{west_id}", headers={"X-Overshoot-Region": WEST})
    assert unauthenticated.headers["X-Overshoot-Region"] == WEST


def test_a_stream_of_another_region_is_a_409(emu: EmulatorProcess, http: httpx.Client) -> None:
    west_id = create(http, WEST)
    for method, path in calls(west_id):
        response = http.request(method, path, headers=headers(region=CENTRAL))
        assert response.status_code == 409, (method, path)
        assert response.json() == {
            "error": "region_error",
            "message": f"Stream {west_id} is served by region {WEST}",
            "expected_region": WEST,
            "requested_region": CENTRAL,
        }
    # Nothing was done to it: it is still there, in its own region.
    for method, path in calls(west_id):
        response = http.request(method, path, headers=headers(region=WEST))
        assert response.status_code == 200, (method, path)
    [listed] = emu.admin.streams()
    assert listed["region"] == WEST
    assert listed["end_reason"] == "deleted"


def test_an_unknown_region_is_a_409(http: httpx.Client) -> None:
    stream_id = create(http)
    for method, path in [("POST", "/streams"), *calls(stream_id)]:
        response = http.request(method, path, headers=headers(region="eu-west9"))
        assert response.status_code == 409, (method, path)
        assert response.json() == {
            "error": "region_error",
            "message": "Unknown region 'eu-west9'",
            "requested_region": "eu-west9",
        }
        assert response.headers["X-Overshoot-Region"] == CENTRAL


def test_a_foreign_key_learns_nothing_about_regions(http: httpx.Client) -> None:
    west_id = create(http, WEST)
    for region in (None, CENTRAL, WEST):
        for method, path in calls(west_id):
            response = http.request(method, path, headers=headers(BOB, region))
            assert response.status_code == 404, (method, path, region)
            assert response.json() == {"detail": "Stream not found"}


def test_the_default_region_moves_at_run_time(emu: EmulatorProcess, http: httpx.Client) -> None:
    central_id = create(http)
    assert emu.admin.region() == CENTRAL
    assert emu.admin.set_region(WEST) == {"region": WEST, "regions": [CENTRAL, WEST]}

    # A client without the header now reaches us-west1: its old stream is elsewhere.
    moved = http.get(f"/streams/{central_id}", headers=headers())
    assert moved.status_code == 409
    assert moved.headers["X-Overshoot-Region"] == WEST
    assert moved.json()["expected_region"] == CENTRAL
    assert moved.json()["requested_region"] == WEST
    # Asking for the stream's region by name still works.
    named = http.get(f"/streams/{central_id}", headers=headers(region=CENTRAL))
    assert named.status_code == 200
    # New streams are created in the region that serves the create.
    west_id = http.post("/streams", json={}, headers=headers()).json()["id"]
    assert emu.admin.stream(west_id)["region"] == WEST  # type: ignore[index]

    with pytest.raises(httpx.HTTPStatusError) as unknown:
        emu.admin.set_region("eu-west9")
    assert unknown.value.response.status_code == 422
    emu.admin.reset()
    assert emu.admin.region() == CENTRAL


def test_the_admin_creates_a_stream_in_a_region(emu: EmulatorProcess, http: httpx.Client) -> None:
    created = emu.admin.create_stream(ALICE, region=WEST)
    assert created["region"] == WEST
    assert created["state"] == "active"
    assert ALICE not in str(created)
    stream_id = created["id"]
    assert http.get(f"/streams/{stream_id}", headers=headers(region=WEST)).status_code == 200
    assert http.get(f"/streams/{stream_id}", headers=headers()).status_code == 409
    assert http.get(f"/streams/{stream_id}", headers=headers(BOB, WEST)).status_code == 404
    assert emu.admin.create_stream(BOB)["region"] == CENTRAL
    with pytest.raises(httpx.HTTPStatusError) as unknown:
        emu.admin.create_stream(ALICE, region="eu-west9")
    assert unknown.value.response.status_code == 422


async def test_async_region_helpers(emu: EmulatorProcess) -> None:
    async with emu.async_admin() as admin:
        assert (await admin.set_region(WEST))["region"] == WEST
        assert await admin.region() == WEST
        created = await admin.create_stream(BOB)
        assert created["region"] == WEST
        assert (await admin.stream(created["id"]))["region"] == WEST  # type: ignore[index]
        assert (await admin.pulls())["pulls"] == []
