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
