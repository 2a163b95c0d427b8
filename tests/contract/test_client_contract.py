"""Contract tests: `OvershootClient` against the emulator process over real sockets.

Every endpoint under `/v1` and `/v1beta`, every documented error code, malformed bodies,
slow and dropped connections, a lease that really runs out, tombstones, DELETE twice,
foreign keys, secrets kept out of errors and logs, and connection reuse. Faults are queued
through the emulator's admin surface and scoped to each test's own API key; call counts
come from the emulator, so "sent exactly once" is what the server saw.

Retry pauses go through the client's injected `sleep` (recorded, not waited): the retries
themselves are real requests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from fixtures.emulator import PULL_REGIONS, EmulatorFactory
from overshoot_emulator.config import key_fingerprint
from overshoot_localstack.emulator import AsyncEmulatorAdmin, EmulatorProcess
from overshoot_localstack.rtsp import RtspServer, free_port
from overshoot_operator.overshoot import (
    CameraSource,
    InvalidRequest,
    NotFound,
    OvershootClient,
    OvershootError,
    OvershootUnavailable,
    PaymentRequired,
    RateLimited,
    SourceUnusable,
    StreamCreated,
    Unauthorized,
    UnexpectedResponse,
    WrongRegion,
)

pytestmark = pytest.mark.contract

PREFIXES = ("/v1", "/v1beta")
_serial = itertools.count()
E = TypeVar("E", bound=OvershootError)


class Secrets:
    """Every API key and publish token a test touched, and every error it saw.

    Checked after each test: no error text, repr, body or detail and no log line (httpx's
    and httpcore's DEBUG logs included) may contain any of them."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.errors: list[BaseException] = []

    def key(self, name: str) -> SecretStr:
        # Unique per test so faults scoped to it cannot touch another test's calls.
        raw = f"ovs_{name}_{next(_serial)}_{time.monotonic_ns()}_secretpart"
        self.values.add(raw)
        return SecretStr(raw)

    def token(self, value: SecretStr | None) -> None:
        if value is not None:
            self.values.add(value.get_secret_value())

    def exposed(self, text: str) -> list[str]:
        return [secret for secret in self.values if secret in text]


@pytest.fixture
def secrets(caplog: pytest.LogCaptureFixture) -> Iterator[Secrets]:
    caplog.set_level(logging.DEBUG)
    found = Secrets()
    yield found
    for error in found.errors:
        surfaces = [
            str(error),
            repr(error),
            "".join(traceback.format_exception(error)),
        ]
        if isinstance(error, OvershootError):
            surfaces += [error.message, str(error.body), str(error.detail)]
        for text in surfaces:
            assert not found.exposed(text), f"a secret leaked through {type(error).__name__}"
    # The test's own admin calls name the key in a query string on purpose; not the client.
    records = caplog.get_records("setup") + caplog.get_records("call")
    logged = "\n".join(
        record.getMessage() + repr(record.args) + str(record.exc_text)
        for record in records
        if "/_emulator/" not in record.getMessage()
    )
    assert not found.exposed(logged), "a secret leaked into a log line"


async def raises(kind: type[E], call: Awaitable[object], secrets: Secrets) -> E:
    """Await `call`, which must raise exactly a `kind`; keep it for the secrets check."""
    with pytest.raises(OvershootError) as caught:
        await call
    secrets.errors.append(caught.value)
    error = caught.value
    assert isinstance(error, kind) and type(error) is kind, repr(error)
    return error


class Pauses:
    """The client's injected sleep: records each retry pause and yields once."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def admin(emulator_reset: EmulatorProcess) -> AsyncIterator[AsyncEmulatorAdmin]:
    async with emulator_reset.async_admin() as helper:
        yield helper


@pytest.fixture
def pauses() -> Pauses:
    return Pauses()


ClientFactory = Callable[..., OvershootClient]


@pytest.fixture(params=["aiohttp", "httpcore"])
async def make_client(
    request: pytest.FixtureRequest, emulator_reset: EmulatorProcess, pauses: Pauses
) -> AsyncIterator[ClientFactory]:
    """Clients on the default transport (httpx over aiohttp) and on httpx's own."""
    made: list[OvershootClient] = []

    def make(base_url: str | None = None, **options: Any) -> OvershootClient:
        options.setdefault("sleep", pauses)
        if request.param == "httpcore":
            options.setdefault("transport", httpx.AsyncHTTPTransport())
        client = OvershootClient(base_url or emulator_reset.api_url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture
def client(make_client: ClientFactory) -> OvershootClient:
    return make_client()


async def create(client: OvershootClient, key: SecretStr, secrets: Secrets) -> StreamCreated:
    created = await client.create_stream(key)
    secrets.token(created.publish.token)
    return created


async def calls(admin: AsyncEmulatorAdmin, key: SecretStr) -> dict[str, int]:
    counts: dict[str, int] = await admin.calls(key.get_secret_value())
    return counts


# --- every endpoint, both prefixes ---------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_a_stream_lives_and_dies_under_each_prefix(
    emulator_reset: EmulatorProcess,
    make_client: ClientFactory,
    admin: AsyncEmulatorAdmin,
    secrets: Secrets,
    prefix: str,
) -> None:
    client = make_client(emulator_reset.url + prefix)
    key = secrets.key("lifecycle")

    created = await create(client, key, secrets)
    assert created.state == "active"
    assert created.publish.type == "livekit" and created.publish.url
    assert created.ttl_seconds == 300
    assert created.expires_at_ms > time.time() * 1000 + 290_000

    state = await client.get_stream(key, created.id)
    assert state.id == created.id and state.state == "active" and not state.ended
    # Before any frame the frame fields are null; the model keeps them as None.
    assert state.last_frame_at_ms is None and state.audio is False

    renewed = await client.keepalive(key, created.id)
    secrets.token(renewed.publish.token if renewed.publish else None)
    assert renewed.id == created.id
    assert renewed.expires_at_ms >= created.expires_at_ms
    assert renewed.publish is not None
    assert renewed.publish.token.get_secret_value() != created.publish.token.get_secret_value()

    assert await client.delete_stream(key, created.id) is True
    assert await client.delete_stream(key, created.id) is False
    await raises(NotFound, client.keepalive(key, created.id), secrets)

    assert await calls(admin, key) == {
        "create": 1,
        "get": 1,
        "keepalive": 2,
        "delete": 2,
        "viewer_token": 0,
    }


async def test_a_deleted_stream_reads_as_ended_then_gone(
    client: OvershootClient, secrets: Secrets
) -> None:
    key = secrets.key("deleted")
    created = await create(client, key, secrets)
    assert await client.delete_stream(key, created.id) is True
    # Tombstone (undocumented length; the session emulator keeps 60 s).
    state = await client.get_stream(key, created.id)
    assert state.ended and state.end_reason == "deleted" and state.ended_at_ms is not None


async def test_a_reaped_stream_refuses_keepalive(
    client: OvershootClient, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    key = secrets.key("reaped")
    created = await create(client, key, secrets)
    await admin.reap(created.id)
    error = await raises(NotFound, client.keepalive(key, created.id), secrets)
    assert error.status_code == 404 and error.detail
    state = await client.get_stream(key, created.id)
    assert state.ended and state.end_reason == "reaped"
    assert await client.delete_stream(key, created.id) is False


async def test_frames_show_up_in_get(
    client: OvershootClient, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    key = secrets.key("frames")
    created = await create(client, key, secrets)
    await admin.frames(created.id, 50, fps=25)
    state = await client.get_stream(key, created.id)
    assert state.last_frame_index == 49
    assert state.last_frame_at_ms is not None and state.recent_fps


async def test_a_foreign_key_sees_nothing(client: OvershootClient, secrets: Secrets) -> None:
    owner, stranger = secrets.key("owner"), secrets.key("stranger")
    created = await create(client, owner, secrets)
    await raises(NotFound, client.get_stream(stranger, created.id), secrets)
    await raises(NotFound, client.keepalive(stranger, created.id), secrets)
    assert await client.delete_stream(stranger, created.id) is False
    # Still the owner's, and still alive.
    assert not (await client.get_stream(owner, created.id)).ended


async def test_an_unknown_or_malformed_id_is_not_found(
    client: OvershootClient, secrets: Secrets
) -> None:
    key = secrets.key("unknown")
    await raises(NotFound, client.get_stream(key, "2ea5a604-d225-4cd2-82ac-b907cb0b4f63"), secrets)
    await raises(NotFound, client.keepalive(key, "not-a-uuid"), secrets)
    assert await client.delete_stream(key, "2ea5a604-d225-4cd2-82ac-b907cb0b4f63") is False


# --- documented error codes ----------------------------------------------------------------


async def test_a_key_the_service_does_not_know_is_unauthorized(
    fresh_emulator: EmulatorFactory, make_client: ClientFactory, secrets: Secrets
) -> None:
    good = secrets.key("good")
    emulator = fresh_emulator(api_keys=[good.get_secret_value()])
    client = make_client(emulator.api_url)
    created = await create(client, good, secrets)
    wrong = secrets.key("wrong")
    error = await raises(Unauthorized, client.create_stream(wrong), secrets)
    assert error.status_code == 401 and error.detail and not error.retryable
    await raises(Unauthorized, client.keepalive(wrong, created.id), secrets)
    await raises(Unauthorized, client.get_stream(wrong, created.id), secrets)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, Unauthorized),
        (402, PaymentRequired),
        (403, Unauthorized),
        (404, NotFound),
        (500, OvershootUnavailable),
    ],
)
async def test_an_error_status_maps_to_its_exception(
    client: OvershootClient,
    admin: AsyncEmulatorAdmin,
    secrets: Secrets,
    status: int,
    kind: type[OvershootError],
) -> None:
    key = secrets.key(f"status{status}")
    await admin.fault(status=status, endpoints=["create"], api_key=key.get_secret_value())
    error = await raises(kind, client.create_stream(key), secrets)
    assert error.status_code == status
    assert error.detail == "Injected fault (emulator)"
    assert json.loads(error.body or "") == {"detail": "Injected fault (emulator)"}
    # Create is never repeated once it may have reached the server, whatever came back.
    assert (await calls(admin, key))["create"] == 1


async def test_a_500_on_get_is_unavailable_and_not_retried(
    client: OvershootClient, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    key = secrets.key("get500")
    created = await create(client, key, secrets)
    await admin.fault(status=500, endpoints=["get"], api_key=key.get_secret_value())
    error = await raises(OvershootUnavailable, client.get_stream(key, created.id), secrets)
    assert error.status_code == 500 and error.retryable
    assert (await calls(admin, key))["get"] == 1


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            {
                "error": "validation_error",
                "message": "Request validation failed",
                "details": [{"field": "body", "issue": "not an object"}],
            },
            "Request validation failed",
        ),
        (
            {"detail": [{"loc": ["body", "ttl"], "msg": "Field required", "type": "missing"}]},
            "body.ttl: Field required",
        ),
    ],
    ids=["error-message-shape", "fastapi-shape"],
)
async def test_a_422_in_either_documented_shape_is_an_invalid_request(
    client: OvershootClient,
    admin: AsyncEmulatorAdmin,
    secrets: Secrets,
    body: dict[str, Any],
    detail: str,
) -> None:
    key = secrets.key("invalid")
    await admin.fault(
        status=422, body=json.dumps(body), endpoints=["create"], api_key=key.get_secret_value()
    )
    error = await raises(InvalidRequest, client.create_stream(key), secrets)
    assert error.status_code == 422 and error.detail == detail
    assert json.loads(error.body or "") == body


async def test_a_429_carries_retry_after(
    client: OvershootClient, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    key = secrets.key("limited")
    await admin.fault(
        status=429, retry_after=7, endpoints=["keepalive"], api_key=key.get_secret_value()
    )
    created = await create(client, key, secrets)
    error = await raises(RateLimited, client.keepalive(key, created.id), secrets)
    assert error.retry_after == 7 and error.status_code == 429 and error.retryable
    assert (await calls(admin, key))["keepalive"] == 1


async def test_a_stream_cap_answers_429_with_retry_after(
    client: OvershootClient, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    key = secrets.key("capped")
    await admin.set_limit(key.get_secret_value(), 1, retry_after=3)
    await create(client, key, secrets)
    error = await raises(RateLimited, client.create_stream(key), secrets)
    assert error.retry_after == 3 and error.detail


async def test_a_503_on_keepalive_is_retried_then_succeeds(
    client: OvershootClient, admin: AsyncEmulatorAdmin, pauses: Pauses, secrets: Secrets
) -> None:
    key = secrets.key("draining")
    created = await create(client, key, secrets)
    await admin.fault(status=503, count=2, endpoints=["keepalive"], api_key=key.get_secret_value())
    renewed = await client.keepalive(key, created.id)
    assert renewed.id == created.id
    assert (await calls(admin, key))["keepalive"] == 3
    # The docs' advice: about 3 tries, 1 s apart (jittered).
    assert len(pauses.seconds) == 2 and all(0.7 <= s <= 1.3 for s in pauses.seconds)


async def test_a_503_that_outlasts_the_retries_is_unavailable(
    client: OvershootClient, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    key = secrets.key("down")
    created = await create(client, key, secrets)
    await admin.fault(status=503, count=5, endpoints=["keepalive"], api_key=key.get_secret_value())
    error = await raises(OvershootUnavailable, client.keepalive(key, created.id), secrets)
    assert error.status_code == 503
    assert (await calls(admin, key))["keepalive"] == 3


async def test_a_503_on_create_is_not_retried(
    client: OvershootClient, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    key = secrets.key("create503")
    await admin.fault(status=503, endpoints=["create"], api_key=key.get_secret_value())
    await raises(OvershootUnavailable, client.create_stream(key), secrets)
    assert (await calls(admin, key))["create"] == 1
    assert await admin.streams() == []


# --- malformed bodies ----------------------------------------------------------------------

PROXY_PAGE = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


async def test_an_html_page_from_a_proxy_does_not_crash_the_client(
    client: OvershootClient, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    key = secrets.key("html")
    scope = key.get_secret_value()
    await admin.fault(
        status=502, body=PROXY_PAGE, content_type="text/html", endpoints=["create"], api_key=scope
    )
    error = await raises(OvershootUnavailable, client.create_stream(key), secrets)
    assert error.status_code == 502 and error.body == PROXY_PAGE and error.detail is None

    await admin.fault(
        status=403, body=PROXY_PAGE, content_type="text/html", endpoints=["create"], api_key=scope
    )
    denied = await raises(Unauthorized, client.create_stream(key), secrets)
    assert denied.body == PROXY_PAGE and denied.detail is None


async def test_an_empty_error_body_does_not_crash_the_client(
    client: OvershootClient, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    key = secrets.key("empty")
    scope = key.get_secret_value()
    await admin.fault(status=401, content_type="", endpoints=["create"], api_key=scope)
    error = await raises(Unauthorized, client.create_stream(key), secrets)
    assert error.body == "" and error.detail is None

    await admin.fault(status=418, content_type="", endpoints=["create"], api_key=scope)
    odd = await raises(UnexpectedResponse, client.create_stream(key), secrets)
    assert odd.status_code == 418


async def test_a_json_error_body_of_unknown_shape_is_kept_without_detail(
    client: OvershootClient, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    key = secrets.key("oddjson")
    await admin.fault(
        status=402, body='["no", "object"]', endpoints=["create"], api_key=key.get_secret_value()
    )
    error = await raises(PaymentRequired, client.create_stream(key), secrets)
    assert error.detail is None and error.body == '["no", "object"]'


def _with_extras(value: Any) -> Any:
    """The answer a newer API might give: extra fields at every level."""
    if isinstance(value, dict):
        return {
            **{k: _with_extras(v) for k, v in value.items()},
            "added_later": {"nested": [1, 2]},
        }
    return value


Rewrite = Callable[[Any], Any]


@pytest.fixture
async def rewriting_proxy(
    emulator_reset: EmulatorProcess,
) -> AsyncIterator[Callable[[Rewrite], Awaitable[str]]]:
    """Loopback reverse proxies to the emulator that rewrite every 2xx JSON answer."""
    session = aiohttp.ClientSession(auto_decompress=False)
    runners: list[web.AppRunner] = []

    async def start(rewrite: Rewrite) -> str:
        async def forward(request: web.Request) -> web.Response:
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() in ("authorization", "content-type")
            }
            async with session.request(
                request.method,
                emulator_reset.url + request.path_qs,
                data=await request.read(),
                headers=headers,
            ) as answer:
                raw = await answer.read()
                if answer.content_type == "application/json" and answer.status < 300:
                    raw = json.dumps(rewrite(json.loads(raw))).encode()
                return web.Response(
                    status=answer.status, body=raw, content_type=answer.content_type
                )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()
        await session.close()


async def test_unknown_fields_in_answers_are_tolerated(
    make_client: ClientFactory,
    rewriting_proxy: Callable[[Rewrite], Awaitable[str]],
    secrets: Secrets,
) -> None:
    client = make_client(await rewriting_proxy(_with_extras))
    key = secrets.key("extras")
    created = await create(client, key, secrets)
    state = await client.get_stream(key, created.id)
    renewed = await client.keepalive(key, created.id)
    secrets.token(renewed.publish.token if renewed.publish else None)
    assert state.state == "active" and renewed.id == created.id
    assert await client.delete_stream(key, created.id) is True


def _without_lease(value: Any) -> Any:
    return {k: v for k, v in value.items() if k != "expires_at_ms"}


async def test_a_success_that_breaks_the_contract_is_unexpected_and_hides_the_token(
    make_client: ClientFactory,
    rewriting_proxy: Callable[[Rewrite], Awaitable[str]],
    admin: AsyncEmulatorAdmin,
    secrets: Secrets,
) -> None:
    client = make_client(await rewriting_proxy(_without_lease))
    key = secrets.key("nolease")
    error = await raises(UnexpectedResponse, client.create_stream(key), secrets)
    assert error.status_code == 201 and "expires_at_ms" in error.message
    # The stream was made; its token reached us only inside the broken answer.
    (stream,) = await admin.streams()
    assert error.body and '"token": "***"' in error.body and stream["id"] in error.body


# --- slow and dropped connections ----------------------------------------------------------


async def test_a_slow_create_hits_the_timeout_and_is_not_repeated(
    make_client: ClientFactory, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    client = make_client(timeout=httpx.Timeout(0.3))
    key = secrets.key("slowcreate")
    await admin.fault(latency_ms=1500, endpoints=["create"], api_key=key.get_secret_value())
    started = time.monotonic()
    error = await raises(OvershootUnavailable, client.create_stream(key), secrets)
    assert time.monotonic() - started < 1.4
    assert error.request_sent and "ReadTimeout" in error.message
    assert (await calls(admin, key))["create"] == 1


async def test_a_slow_keepalive_times_out_then_the_retry_succeeds(
    make_client: ClientFactory, admin: AsyncEmulatorAdmin, pauses: Pauses, secrets: Secrets
) -> None:
    client = make_client(timeout=httpx.Timeout(0.3))
    key = secrets.key("slowkeepalive")
    created = await create(client, key, secrets)
    await admin.fault(latency_ms=1500, endpoints=["keepalive"], api_key=key.get_secret_value())
    renewed = await client.keepalive(key, created.id)
    assert renewed.id == created.id
    assert (await calls(admin, key))["keepalive"] == 2
    assert len(pauses.seconds) == 1


async def test_a_keepalive_that_stays_slow_is_unavailable(
    make_client: ClientFactory, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    client = make_client(timeout=httpx.Timeout(0.3))
    key = secrets.key("stayslow")
    created = await create(client, key, secrets)
    await admin.fault(
        latency_ms=1000, count=3, endpoints=["keepalive"], api_key=key.get_secret_value()
    )
    await raises(OvershootUnavailable, client.keepalive(key, created.id), secrets)
    assert (await calls(admin, key))["keepalive"] == 3


async def test_a_dropped_keepalive_is_retried_and_succeeds(
    client: OvershootClient, admin: AsyncEmulatorAdmin, pauses: Pauses, secrets: Secrets
) -> None:
    key = secrets.key("dropkeepalive")
    created = await create(client, key, secrets)
    await admin.fault(drop=True, endpoints=["keepalive"], api_key=key.get_secret_value())
    renewed = await client.keepalive(key, created.id)
    secrets.token(renewed.publish.token if renewed.publish else None)
    assert renewed.id == created.id
    assert (await calls(admin, key))["keepalive"] == 2
    assert len(pauses.seconds) == 1


async def test_a_dropped_get_and_delete_are_retried(
    client: OvershootClient, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    key = secrets.key("dropother")
    created = await create(client, key, secrets)
    await admin.fault(drop=True, endpoints=["get"], api_key=key.get_secret_value())
    await admin.fault(drop=True, endpoints=["delete"], api_key=key.get_secret_value())
    assert (await client.get_stream(key, created.id)).id == created.id
    assert await client.delete_stream(key, created.id) is True
    assert await calls(admin, key) == {
        "create": 1,
        "get": 2,
        "keepalive": 0,
        "delete": 2,
        "viewer_token": 0,
    }


async def test_a_dropped_create_is_not_repeated(
    client: OvershootClient, admin: AsyncEmulatorAdmin, pauses: Pauses, secrets: Secrets
) -> None:
    key = secrets.key("dropcreate")
    await admin.fault(drop=True, endpoints=["create"], api_key=key.get_secret_value())
    error = await raises(OvershootUnavailable, client.create_stream(key), secrets)
    # The request left this process: a second create could make a second stream.
    assert error.request_sent and error.status_code is None
    assert (await calls(admin, key))["create"] == 1
    assert pauses.seconds == []
    # The next create is a new, deliberate call and works.
    await create(client, key, secrets)
    assert (await calls(admin, key))["create"] == 2


async def test_a_refused_connection_is_unavailable_and_unsent(
    make_client: ClientFactory, secrets: Secrets
) -> None:
    # A port nobody listens on: bind one, learn its number, close it.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = make_client(f"http://127.0.0.1:{port}/v1")
    key = secrets.key("refused")
    error = await raises(OvershootUnavailable, client.create_stream(key), secrets)
    assert not error.request_sent and "ConnectError" in error.message


# --- leases and tombstones in real time ----------------------------------------------------


async def _until(check: Callable[[], Awaitable[bool]], within: float) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_a_lease_runs_out_then_the_tombstone_goes(
    fresh_emulator: EmulatorFactory, make_client: ClientFactory, secrets: Secrets
) -> None:
    emulator = fresh_emulator(ttl_seconds=1, tombstone_seconds=2)
    client = make_client(emulator.api_url)
    key = secrets.key("lease")
    created = await create(client, key, secrets)
    assert created.ttl_seconds == 1

    # A keepalive inside the lease renews it.
    await asyncio.sleep(0.5)
    renewed = await client.keepalive(key, created.id)
    secrets.token(renewed.publish.token if renewed.publish else None)
    assert renewed.expires_at_ms > created.expires_at_ms

    async def ended() -> bool:
        return (await client.get_stream(key, created.id)).ended

    await _until(ended, within=5)
    await raises(NotFound, client.keepalive(key, created.id), secrets)
    state = await client.get_stream(key, created.id)
    assert state.state == "ended" and state.end_reason == "expired"
    assert state.ended_at_ms is not None and state.ended_at_ms >= renewed.expires_at_ms

    async def gone() -> bool:
        try:
            await client.get_stream(key, created.id)
        except NotFound as error:
            secrets.errors.append(error)
            return True
        return False

    await _until(gone, within=6)
    assert await client.delete_stream(key, created.id) is False


# --- secrets -------------------------------------------------------------------------------


async def test_no_error_repr_or_log_line_carries_a_key_or_a_token(
    make_client: ClientFactory, admin: AsyncEmulatorAdmin, secrets: Secrets
) -> None:
    """One run through every failure path; the `secrets` fixture checks what it saw."""
    client = make_client(timeout=httpx.Timeout(0.3))
    key = secrets.key("leak")
    raw = key.get_secret_value()
    created = await create(client, key, secrets)
    renewed = await client.keepalive(key, created.id)
    secrets.token(renewed.publish.token if renewed.publish else None)
    token = created.publish.token.get_secret_value()
    assert raw not in repr(client.__dict__)
    for model in (created, renewed, created.publish):
        assert token not in repr(model) and token not in str(model)

    # A server that echoes the key and a token back in error bodies.
    echoes = [
        (401, {"detail": f"Invalid API key {raw}"}),
        (422, {"detail": [{"loc": ["header", raw], "msg": f"bad {raw}", "type": "x"}]}),
        (422, {"error": "validation_error", "message": f"key {raw} refused", "details": []}),
        (500, {"detail": "oops", "publish": {"token": token, "url": "wss://x"}}),
        (429, {"detail": f"slow down {raw}"}),
    ]
    for status, body in echoes:
        await admin.fault(status=status, body=json.dumps(body), endpoints=["create"], api_key=raw)
        with pytest.raises(OvershootError) as caught:
            await client.create_stream(key)
        secrets.errors.append(caught.value)
    await admin.fault(status=502, body=f"<html>{raw}</html>", content_type="text/html", api_key=raw)
    with pytest.raises(OvershootError) as caught:
        await client.create_stream(key)
    secrets.errors.append(caught.value)

    # Transport failures: a drop, a timeout, a refused connection.
    await admin.fault(drop=True, endpoints=["create"], api_key=raw)
    await raises(OvershootUnavailable, client.create_stream(key), secrets)
    await admin.fault(latency_ms=1000, endpoints=["create"], api_key=raw)
    await raises(OvershootUnavailable, client.create_stream(key), secrets)
    await raises(NotFound, client.get_stream(key, "nope"), secrets)
    assert await client.delete_stream(key, created.id) is True
    await raises(NotFound, client.keepalive(key, created.id), secrets)

    assert len(secrets.errors) == 10
    assert any(isinstance(e, OvershootError) and e.body and "***" in e.body for e in secrets.errors)


# --- connection reuse ----------------------------------------------------------------------


class CountingRelay:
    """A loopback TCP relay in front of the emulator that counts the connections it
    accepts: what the server would see, whatever the client's transport."""

    def __init__(self, upstream: httpx.URL) -> None:
        self.upstream = upstream
        self.accepted = 0
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        host, port = self.upstream.host, self.upstream.port
        assert port is not None
        up_reader, up_writer = await asyncio.open_connection(host, port)
        self._writers += [writer, up_writer]
        for pipe in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
            task = asyncio.create_task(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def close(self) -> None:
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        for writer in self._writers:
            writer.close()


@pytest.fixture
async def relay(emulator_reset: EmulatorProcess) -> AsyncIterator[tuple[CountingRelay, str]]:
    relay = CountingRelay(httpx.URL(emulator_reset.url))
    server = await asyncio.start_server(relay._accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield relay, f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await relay.close()
        await server.wait_closed()


async def test_one_client_reuses_its_connections(
    make_client: ClientFactory, relay: tuple[CountingRelay, str], secrets: Secrets
) -> None:
    counter, url = relay
    client = make_client(url)
    key = secrets.key("reuse")
    created = await create(client, key, secrets)
    for _ in range(30):
        await client.keepalive(key, created.id)
        await client.get_stream(key, created.id)
    assert counter.accepted == 1

    # 20 at a time over 100 calls: at most one connection per concurrent call.
    gate = asyncio.Semaphore(20)

    async def renew() -> None:
        async with gate:
            await client.keepalive(key, created.id)

    await asyncio.gather(*(renew() for _ in range(100)))
    assert counter.accepted <= 20
    # A second key shares the same pool.
    other = secrets.key("reuse-other")
    for _ in range(5):
        await create(client, other, secrets)
    assert counter.accepted <= 20


# --- v1beta: camera sources, viewer tokens, regions ------------------------------------------
# Against the emulator that pulls cameras itself (private sources allowed, two regions, a
# short connect window): tests/fixtures/emulator.py's `pulling_emulator`.

CAMERA_PASSWORD = "contract-cam-pw-7e21"


@pytest.fixture
async def pulling_client(
    pulling_emulator: EmulatorProcess, pauses: Pauses
) -> AsyncIterator[OvershootClient]:
    async with OvershootClient(pulling_emulator.url + "/v1beta", sleep=pauses) as made:
        yield made


def camera_source(url: str, secrets: Secrets) -> CameraSource:
    secrets.values.add(CAMERA_PASSWORD)
    userinfo = f"viewer:{CAMERA_PASSWORD}@"
    return CameraSource(type="rtsp", url=SecretStr(url.replace("rtsp://", "rtsp://" + userinfo)))


async def test_a_pulled_camera_has_no_publish_token_and_a_moving_last_pull(
    pulling_emulator: EmulatorProcess, pulling_client: OvershootClient, secrets: Secrets
) -> None:
    key = secrets.key("pull")
    with RtspServer(username="viewer", password=CAMERA_PASSWORD) as camera:
        created = await pulling_client.create_stream(key, source=camera_source(camera.url, secrets))
        assert created.publish is None
        assert created.source is not None and created.source.type == "rtsp"
        assert created.region == PULL_REGIONS[0]

        first = await pulling_client.get_stream(key, created.id)
        assert first.last_pull is not None and first.source is not None
        assert first.region == PULL_REGIONS[0]
        deadline = time.monotonic() + 15
        while (
            state := await pulling_client.get_stream(key, created.id)
        ).last_pull == first.last_pull:
            assert time.monotonic() < deadline, "last_pull did not move"
            await asyncio.sleep(0.2)
        assert state.last_frame_index is not None

        renewed = await pulling_client.keepalive(key, created.id)
        assert renewed.publish is None
        assert await pulling_client.delete_stream(key, created.id) is True
        assert (await pulling_client.get_stream(key, created.id)).ended


async def test_a_camera_that_cannot_be_opened_is_source_unusable_and_makes_nothing(
    pulling_emulator: EmulatorProcess, pulling_client: OvershootClient, secrets: Secrets
) -> None:
    key = secrets.key("unreachable")
    url = f"rtsp://127.0.0.1:{free_port()}/stream1"
    error = await raises(
        SourceUnusable,
        pulling_client.create_stream(key, source=camera_source(url, secrets)),
        secrets,
    )
    assert error.unreachable and error.status_code == 422 and not error.retryable
    owner = key_fingerprint(key.get_secret_value())
    assert [s for s in pulling_emulator.admin.streams() if s["owner"] == owner] == []
    assert pulling_emulator.admin.calls(key.get_secret_value())["create"] == 1


async def test_an_api_without_camera_sources_makes_an_ordinary_stream(
    pulling_emulator: EmulatorProcess, pauses: Pauses, secrets: Secrets
) -> None:
    """/v1 ignores the source (the emulator's reading of an older API): the answer has a
    publish token and no source, which the operator must notice (leases.py)."""
    key = secrets.key("v1")
    async with OvershootClient(pulling_emulator.url + "/v1", sleep=pauses) as client:
        created = await client.create_stream(
            key, source=camera_source("rtsp://127.0.0.1:9/none", secrets)
        )
        secrets.token(created.publish.token if created.publish else None)
        assert created.publish is not None and created.source is None
        assert await client.delete_stream(key, created.id)


async def test_a_viewer_token_is_the_owners_only(
    pulling_client: OvershootClient, secrets: Secrets
) -> None:
    key, other = secrets.key("viewer"), secrets.key("not-the-owner")
    created = await pulling_client.create_stream(key)
    secrets.token(created.publish.token if created.publish else None)
    view = await pulling_client.viewer_token(key, created.id, region=created.region)
    secrets.token(view.token)
    assert view.url and view.token.get_secret_value() and view.expires_in_seconds == 300
    await raises(NotFound, pulling_client.viewer_token(other, created.id), secrets)
    assert await pulling_client.delete_stream(key, created.id)
    await raises(NotFound, pulling_client.viewer_token(key, created.id), secrets)


async def test_calls_reach_the_streams_region_and_follow_a_region_error(
    pulling_emulator: EmulatorProcess, pulling_client: OvershootClient, secrets: Secrets
) -> None:
    home, other = PULL_REGIONS
    key = secrets.key("regions")
    created = await pulling_client.create_stream(key, region=other)
    secrets.token(created.publish.token if created.publish else None)
    assert created.region == other
    assert pulling_emulator.admin.stream(created.id)["region"] == other

    # Named: answered by its region at once.
    assert (await pulling_client.keepalive(key, created.id, region=other)).region == other
    # Unnamed (a request reaching the default region): the 409 names the right one, and the
    # client asks it within the same call.
    state = await pulling_client.get_stream(key, created.id)
    assert state.region == other
    # A region the API does not know: refused, naming no region to follow.
    error = await raises(
        WrongRegion, pulling_client.create_stream(key, region="mars-north1"), secrets
    )
    assert error.status_code == 409 and error.expected_region is None
    assert pulling_emulator.admin.region() == home
    assert await pulling_client.delete_stream(key, created.id, region=other)


async def test_a_stream_cap_says_when_to_retry_in_its_rate_limit_headers(
    pulling_emulator: EmulatorProcess, pulling_client: OvershootClient, secrets: Secrets
) -> None:
    key = secrets.key("cap")
    pulling_emulator.admin.set_limit(key.get_secret_value(), 0, retry_after=4)
    error = await raises(RateLimited, pulling_client.create_stream(key), secrets)
    assert error.retry_after == 4
