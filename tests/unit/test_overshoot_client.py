"""Models and error mapping of the Overshoot client, with responses built in-process.

These are pure-logic tests: an `httpx.MockTransport` hands the client canned responses so
each status code and body shape maps to the right error without any server. The same
behaviour against real sockets is in tests/contract/.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr

from overshoot_operator import overshoot as ov

pytestmark = pytest.mark.unit

KEY = SecretStr("ovs_unit_secret_key_0123456789")
TOKEN = "eyJ.unit-token-that-must-never-leak"
SID = "2ea5a604-d225-4cd2-82ac-b907cb0b4f63"


async def _no_sleep(_: float) -> None:
    return None


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> ov.OvershootClient:
    return ov.OvershootClient(
        "https://api.example.invalid/v1", transport=httpx.MockTransport(handler), sleep=_no_sleep
    )


def created_body(**extra: object) -> dict[str, object]:
    return {
        "id": SID,
        "state": "active",
        "publish": {"type": "livekit", "url": "wss://lk.example", "token": TOKEN},
        "expires_at_ms": 1777529931184,
        "ttl_seconds": 300,
        **extra,
    }


async def test_create_parses_and_hides_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=created_body(future_field={"x": 1}))

    async with client_for(handler) as client:
        created = await client.create_stream(KEY)
    assert created.id == SID
    assert created.publish.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(created) and TOKEN not in str(created)
    req = seen[0]
    assert req.method == "POST" and req.url.path == "/v1/streams"
    assert req.headers["authorization"] == f"Bearer {KEY.get_secret_value()}"
    assert req.headers["content-type"] == "application/json" and req.content == b"{}"


async def test_get_tolerates_missing_and_null_fields() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": SID, "state": "active", "recent_fps": None})

    async with client_for(handler) as client:
        state = await client.get_stream(KEY, SID)
    assert state.state == "active" and not state.ended
    assert state.last_frame_at_ms is None and state.recent_fps is None


@pytest.mark.parametrize(
    ("status", "body", "error", "text"),
    [
        (401, {"detail": "Invalid API key"}, ov.Unauthorized, "Invalid API key"),
        (403, {"detail": "Key not assigned"}, ov.Unauthorized, "not assigned"),
        (402, {"detail": "Insufficient credits"}, ov.PaymentRequired, "credits"),
        (404, {"detail": "Stream not found"}, ov.NotFound, "not found"),
        (429, {"detail": "Too many streams"}, ov.RateLimited, "Too many"),
        (
            422,
            {"detail": [{"loc": ["body", "x"], "msg": "field required", "type": "missing"}]},
            ov.InvalidRequest,
            "body.x: field required",
        ),
        (
            422,
            {"error": "validation_error", "message": "bad input", "details": []},
            ov.InvalidRequest,
            "bad input",
        ),
        (503, {"detail": "draining"}, ov.OvershootUnavailable, "draining"),
        (500, "<html>Internal error</html>", ov.OvershootUnavailable, "unavailable"),
        (418, "", ov.UnexpectedResponse, "418"),
    ],
)
async def test_error_mapping(
    status: int, body: object, error: type[ov.OvershootError], text: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers={"content-type": "text/html"})
        return httpx.Response(status, json=body)

    async with client_for(handler) as client:
        with pytest.raises(error) as info:
            await client.keepalive(KEY, SID)
    assert info.value.status_code == status
    assert text in str(info.value)
    assert info.value.endpoint is ov.Endpoint.KEEPALIVE


async def test_rate_limited_keeps_retry_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"detail": "slow down"}, headers={"Retry-After": "7"})

    async with client_for(handler) as client:
        with pytest.raises(ov.RateLimited) as info:
            await client.create_stream(KEY)
    assert info.value.retry_after == 7.0
    assert info.value.retryable


@pytest.mark.parametrize(
    "content", [b"", b"<html><body>502 Bad Gateway</body></html>", b'{"id": 5}', b"[1,2]"]
)
async def test_malformed_success_body_is_unexpected(content: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, content=content)

    async with client_for(handler) as client:
        with pytest.raises(ov.UnexpectedResponse) as info:
            await client.create_stream(KEY)
    assert info.value.status_code == 201


async def test_delete_treats_404_as_done() -> None:
    answers = iter(
        [httpx.Response(200, json={"id": SID, "deleted": True}), httpx.Response(404, json={})]
    )

    async with client_for(lambda request: next(answers)) as client:
        assert await client.delete_stream(KEY, SID) is True
        assert await client.delete_stream(KEY, SID) is False


async def test_keepalive_retries_503_then_succeeds() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            return httpx.Response(503, json={"detail": "starting up"})
        return httpx.Response(
            200,
            json={"id": SID, "expires_at_ms": 1, "publish": {"url": "wss://x", "token": TOKEN}},
        )

    async with client_for(handler) as client:
        result = await client.keepalive(KEY, SID)
    assert calls == 3 and result.publish is not None


async def test_create_is_never_retried_after_the_request_was_sent() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ReadTimeout("read timed out", request=request)

    async with client_for(handler) as client:
        with pytest.raises(ov.OvershootUnavailable):
            await client.create_stream(KEY)
        assert calls == 1
        # A 503 on create is not repeated inside the call either: the caller backs off.
        calls = 0

    def busy(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503, json={"detail": "draining"})

    async with client_for(busy) as client:
        with pytest.raises(ov.OvershootUnavailable):
            await client.create_stream(KEY)
    assert calls == 1


async def test_create_retries_when_the_connection_was_refused() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(201, json=created_body())

    async with client_for(handler) as client:
        await client.create_stream(KEY)
    assert calls == 2


async def test_no_secret_in_errors_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    """A server that echoes the key and a token back must not get them into our errors."""
    key = KEY.get_secret_value()
    echo = {"detail": f"key {key} rejected", "publish": {"token": TOKEN}}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/keepalive"):
            raise httpx.ConnectError(f"refused while sending {key}", request=request)
        return httpx.Response(401, json=echo)

    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    async with client_for(handler) as client:
        for call in (client.create_stream(KEY), client.keepalive(KEY, SID)):
            with pytest.raises(ov.OvershootError) as info:
                await call
            err = info.value
            texts += [str(err), repr(err), err.body or "", err.detail or ""]
            logging.getLogger("test").exception("failed", exc_info=err)
    texts.append(caplog.text)
    blob = json.dumps(texts)
    assert key not in blob
    assert TOKEN not in blob


async def test_token_in_a_non_json_error_page_is_blanked() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwdWJsaXNoZXIifQ.c2lnbmF0dXJl"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text=f"<html>upstream said {jwt}</html>")

    async with client_for(handler) as client:
        with pytest.raises(ov.OvershootUnavailable) as info:
            await client.get_stream(KEY, SID)
    assert jwt not in (info.value.body or "")
    assert "upstream said" in (info.value.body or "")


# ---- v1beta: camera sources, regions, viewer tokens ------------------------------------

CAMERA_URL = "rtsp://viewer:p%40ss-w0rd-77@cam.example.com:554/stream1"
CAMERA_PASSWORD_PARTS = ("p%40ss-w0rd-77", "p@ss-w0rd-77", CAMERA_URL)


def pulled_body() -> dict[str, object]:
    return {
        "id": SID,
        "state": "active",
        "publish": None,
        "source": {"type": "rtsp"},
        "expires_at_ms": 1777529931184,
        "ttl_seconds": 300,
    }


async def test_create_with_a_camera_source_sends_it_and_reads_the_region() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=pulled_body(), headers={"X-Overshoot-Region": "us-west1"})

    source = ov.CameraSource(type="rtsp", url=SecretStr(CAMERA_URL))
    async with client_for(handler) as client:
        created = await client.create_stream(KEY, source=source)
    assert created.publish is None
    assert created.source is not None and created.source.type == "rtsp"
    assert created.region == "us-west1"
    assert json.loads(seen[0].content) == {"source": {"type": "rtsp", "url": CAMERA_URL}}
    assert "X-Overshoot-Region" not in seen[0].headers
    # The create waits for Overshoot's own retries of the URL: a longer read timeout.
    assert seen[0].extensions["timeout"]["read"] == ov.PULL_CREATE_READ_TIMEOUT
    assert CAMERA_URL not in repr(source) and CAMERA_URL not in str(source)


@pytest.mark.parametrize(
    ("body", "unreachable"),
    [
        ({"detail": "Could not connect to source url (check reachability and credentials)"}, True),
        ({"detail": "Source url must resolve to a public address"}, False),
        # FastAPI's validation shape, with the input echoed: the URL must not survive.
        (
            {"detail": [{"loc": ["body", "source", "url"], "msg": "bad url", "input": CAMERA_URL}]},
            False,
        ),
    ],
)
async def test_a_refused_camera_is_source_unusable_and_its_url_is_scrubbed(
    body: dict[str, object], unreachable: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json=body)

    source = ov.CameraSource(type="rtsp", url=SecretStr(CAMERA_URL))
    async with client_for(handler) as client:
        with pytest.raises(ov.SourceUnusable) as caught:
            await client.create_stream(KEY, source=source)
    err = caught.value
    assert err.unreachable is unreachable
    assert not err.retryable
    for text in (str(err), repr(err), err.body or "", err.detail or ""):
        for secret in CAMERA_PASSWORD_PARTS:
            assert secret not in text, (secret, text)


async def test_a_422_without_a_source_is_still_an_invalid_request() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"detail": "nope"})

    async with client_for(handler) as client:
        with pytest.raises(ov.InvalidRequest):
            await client.create_stream(KEY)


async def test_calls_name_the_region_and_follow_a_region_error_once() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        asked = request.headers.get("X-Overshoot-Region")
        if asked != "us-west1":
            return httpx.Response(
                409,
                json={
                    "error": "region_error",
                    "message": "served elsewhere",
                    "expected_region": "us-west1",
                    "requested_region": asked,
                },
                headers={"X-Overshoot-Region": asked or "us-central1"},
            )
        return httpx.Response(
            200,
            json={"id": SID, "expires_at_ms": 1, "publish": None},
            headers={"X-Overshoot-Region": "us-west1"},
        )

    async with client_for(handler) as client:
        result = await client.keepalive(KEY, SID, region="us-central1")
    assert result.region == "us-west1"
    assert [r.headers.get("X-Overshoot-Region") for r in seen] == ["us-central1", "us-west1"]


async def test_a_region_error_is_followed_at_most_once() -> None:
    seen: list[str | None] = []
    regions = iter(["us-west1", "eu-west4", "us-east1"])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("X-Overshoot-Region"))
        return httpx.Response(
            409, json={"detail": {"error": "region_error", "region": next(regions)}}
        )

    async with client_for(handler) as client:
        with pytest.raises(ov.WrongRegion) as caught:
            await client.get_stream(KEY, SID)
    assert seen == [None, "us-west1"]
    assert caught.value.expected_region == "eu-west4"


async def test_a_plain_409_is_an_invalid_request() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"detail": "conflict"})

    async with client_for(handler) as client:
        with pytest.raises(ov.InvalidRequest) as caught:
            await client.delete_stream(KEY, SID)
    assert not isinstance(caught.value, ov.WrongRegion)


async def test_viewer_token_parses_and_hides_the_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"view": {"url": "wss://lk", "token": TOKEN, "expires_in_seconds": 300}}
        )

    async with client_for(handler) as client:
        view = await client.viewer_token(KEY, SID, region="us-west1")
    assert seen[0].url.path.endswith(f"/streams/{SID}/viewer-token")
    assert seen[0].method == "POST"
    assert seen[0].headers["X-Overshoot-Region"] == "us-west1"
    assert view.url == "wss://lk" and view.expires_in_seconds == 300
    assert view.token.get_secret_value() == TOKEN and TOKEN not in repr(view)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"x-ratelimit-reset": "7", "x-ratelimit-remaining": "0"}, 7.0),
        ({"Retry-After": "2", "x-ratelimit-reset": "9"}, 2.0),
        ({"x-ratelimit-reset": "1777529931"}, None),  # a time, not a wait
        ({}, None),
    ],
)
async def test_rate_limit_waits_come_from_retry_after_or_the_reset(
    headers: dict[str, str], expected: float | None
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"detail": "slow down"}, headers=headers)

    async with client_for(handler) as client:
        with pytest.raises(ov.RateLimited) as caught:
            await client.get_stream(KEY, SID)
    assert caught.value.retry_after == expected


def test_get_reads_last_pull_and_source() -> None:
    state = ov.StreamState.model_validate(
        {"id": SID, "state": "active", "last_pull": 1777529643664, "source": {"type": "hls"}}
    )
    assert state.last_pull == 1777529643664
    assert state.source is not None and state.source.type == "hls"
