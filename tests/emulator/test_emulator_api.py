"""Contract tests: the stream endpoints of a real emulator process, over sockets, under
both `/v1` and `/v1beta`, with per-key auth and ownership: the four documented ones and
the viewer token (v1beta)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from overshoot_localstack.emulator import EmulatorProcess

pytestmark = pytest.mark.contract

ALICE = "ovs-alice-0123456789"
BOB = "ovs_bob_9876543210"
PREFIXES = ["/v1", "/v1beta"]


@pytest.fixture(scope="module")
def keyed_emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(api_keys=[ALICE, BOB]) as process:
        yield process


@pytest.fixture(params=PREFIXES)
def prefix(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest.fixture
def client(keyed_emulator: EmulatorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed_emulator.url, timeout=10) as http:
        yield http


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create(client: httpx.Client, prefix: str, key: str = ALICE) -> dict[str, object]:
    response = client.post(f"{prefix}/streams", json={}, headers=auth(key))
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def test_create_answers_the_documented_shape(client: httpx.Client, prefix: str) -> None:
    body = create(client, prefix)
    assert set(body) == {"id", "state", "publish", "expires_at_ms", "ttl_seconds"}
    assert uuid.UUID(str(body["id"])).version == 4
    assert body["state"] == "active"
    assert body["ttl_seconds"] == 300
    publish = body["publish"]
    assert isinstance(publish, dict)
    assert publish["type"] == "livekit"
    assert publish["url"]
    assert publish["token"]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="no-body"),
        pytest.param({"content": b"{}"}, id="empty-object-no-content-type"),
        pytest.param({"json": {"anything": [1, 2]}}, id="any-object"),
    ],
)
def test_create_accepts_no_body_or_any_object(
    client: httpx.Client, prefix: str, kwargs: dict[str, object]
) -> None:
    response = client.post(f"{prefix}/streams", headers=auth(ALICE), **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 201


@pytest.mark.parametrize("content", [b"[1]", b"not json"])
def test_create_refuses_a_body_that_is_not_an_object(
    client: httpx.Client, prefix: str, content: bytes
) -> None:
    response = client.post(f"{prefix}/streams", headers=auth(ALICE), content=content)
    assert response.status_code == 422
    assert "detail" in response.json()


def test_get_answers_every_documented_field(client: httpx.Client, prefix: str) -> None:
    created = create(client, prefix)
    response = client.get(f"{prefix}/streams/{created['id']}", headers=auth(ALICE))
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == created["id"]
    assert body["state"] == "active"
    assert body["expires_at_ms"] == created["expires_at_ms"]
    assert body["ttl_seconds"] == 300
    assert body["audio"] is False
    assert body["ended_at_ms"] is None
    assert body["end_reason"] is None
    # No frames yet: every frame field is null.
    for field in (
        "stream_time_ms",
        "first_frame_at_ms",
        "last_frame_at_ms",
        "last_frame_index",
        "first_available_frame_index",
        "first_available_frame_at_ms",
        "recent_fps",
        "retained_frame_count",
        "evicted_frame_count",
    ):
        assert body[field] is None, field
    assert body["created_at_ms"] <= body["expires_at_ms"]


def test_keepalive_renews_the_lease_with_a_fresh_token(client: httpx.Client, prefix: str) -> None:
    created = create(client, prefix)
    publish = created["publish"]
    assert isinstance(publish, dict)
    tokens = {publish["token"]}
    expiries = [int(str(created["expires_at_ms"]))]
    for _ in range(3):
        response = client.post(f"{prefix}/streams/{created['id']}/keepalive", headers=auth(ALICE))
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"id", "expires_at_ms", "ttl_seconds", "publish", "stream_time_ms"}
        assert body["id"] == created["id"]
        assert body["ttl_seconds"] == 300
        assert body["publish"]["type"] == "livekit"
        tokens.add(body["publish"]["token"])
        expiries.append(body["expires_at_ms"])
    assert len(tokens) == 4
    assert expiries == sorted(expiries)


def test_delete_then_tombstone_then_second_delete_is_404(client: httpx.Client, prefix: str) -> None:
    stream_id = create(client, prefix)["id"]
    response = client.delete(f"{prefix}/streams/{stream_id}", headers=auth(ALICE))
    assert response.status_code == 200
    assert response.json() == {"id": stream_id, "deleted": True}

    tombstone = client.get(f"{prefix}/streams/{stream_id}", headers=auth(ALICE))
    assert tombstone.status_code == 200
    assert tombstone.json()["state"] == "ended"
    assert tombstone.json()["end_reason"] == "deleted"
    assert tombstone.json()["ended_at_ms"] is not None

    again = client.delete(f"{prefix}/streams/{stream_id}", headers=auth(ALICE))
    assert again.status_code == 404
    assert "detail" in again.json()
    keepalive = client.post(f"{prefix}/streams/{stream_id}/keepalive", headers=auth(ALICE))
    assert keepalive.status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param(auth("ovs-not-a-key"), id="unknown-key"),
        pytest.param({"Authorization": f"Basic {ALICE}"}, id="wrong-scheme"),
        pytest.param({"Authorization": "Bearer"}, id="empty"),
    ],
)
def test_every_endpoint_wants_a_valid_key(
    client: httpx.Client, prefix: str, headers: dict[str, str]
) -> None:
    stream_id = create(client, prefix)["id"]
    calls = [
        ("POST", f"{prefix}/streams"),
        ("GET", f"{prefix}/streams/{stream_id}"),
        ("POST", f"{prefix}/streams/{stream_id}/keepalive"),
        ("POST", f"{prefix}/streams/{stream_id}/viewer-token"),
        ("DELETE", f"{prefix}/streams/{stream_id}"),
    ]
    for method, path in calls:
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path)
        assert isinstance(response.json()["detail"], str)


def test_a_stream_of_another_key_is_not_found(client: httpx.Client, prefix: str) -> None:
    stream_id = create(client, prefix, ALICE)["id"]
    for method, path in [
        ("GET", f"{prefix}/streams/{stream_id}"),
        ("POST", f"{prefix}/streams/{stream_id}/keepalive"),
        ("POST", f"{prefix}/streams/{stream_id}/viewer-token"),
        ("DELETE", f"{prefix}/streams/{stream_id}"),
    ]:
        response = client.request(method, path, headers=auth(BOB))
        assert response.status_code == 404, (method, path)
    # Bob's attempts changed nothing for Alice.
    mine = client.get(f"{prefix}/streams/{stream_id}", headers=auth(ALICE))
    assert mine.json()["state"] == "active"


@pytest.mark.parametrize("stream_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_unknown_streams_are_not_found(client: httpx.Client, prefix: str, stream_id: str) -> None:
    for method, path in [
        ("GET", f"{prefix}/streams/{stream_id}"),
        ("POST", f"{prefix}/streams/{stream_id}/keepalive"),
        ("POST", f"{prefix}/streams/{stream_id}/viewer-token"),
        ("DELETE", f"{prefix}/streams/{stream_id}"),
    ]:
        response = client.request(method, path, headers=auth(ALICE))
        assert response.status_code == 404
        assert response.json() == {"detail": "Stream not found"}


def test_a_viewer_token_answers_the_documented_shape(client: httpx.Client, prefix: str) -> None:
    created = create(client, prefix)
    tokens = set()
    for _ in range(2):
        response = client.post(
            f"{prefix}/streams/{created['id']}/viewer-token", headers=auth(ALICE)
        )
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"view"}
        assert set(body["view"]) == {"url", "token", "expires_in_seconds"}
        assert body["view"]["expires_in_seconds"] == 300
        assert body["view"]["url"] == created["publish"]["url"]  # type: ignore[index]
        tokens.add(body["view"]["token"])
    assert len(tokens) == 2


def test_an_ended_stream_has_no_viewer_token(client: httpx.Client, prefix: str) -> None:
    stream_id = create(client, prefix)["id"]
    assert client.delete(f"{prefix}/streams/{stream_id}", headers=auth(ALICE)).status_code == 200
    # The tombstone is still readable, but there is nothing to view.
    assert client.get(f"{prefix}/streams/{stream_id}", headers=auth(ALICE)).status_code == 200
    response = client.post(f"{prefix}/streams/{stream_id}/viewer-token", headers=auth(ALICE))
    assert response.status_code == 404
    assert response.json() == {"detail": "Stream not found"}


def test_streams_are_shared_between_prefixes(client: httpx.Client) -> None:
    stream_id = create(client, "/v1")["id"]
    response = client.get(f"/v1beta/streams/{stream_id}", headers=auth(ALICE))
    assert response.status_code == 200


def test_unknown_paths_answer_json(client: httpx.Client) -> None:
    response = client.get("/v2/streams", headers=auth(ALICE))
    assert response.status_code == 404
    assert "detail" in response.json()
    response = client.put("/v1/streams", headers=auth(ALICE))
    assert response.status_code == 405
    assert "detail" in response.json()
