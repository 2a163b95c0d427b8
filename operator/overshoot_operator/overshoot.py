"""The Overshoot Streams API client: the only module that talks to Overshoot.

Boundary: HTTP to `{base_url}/streams...` (https://api.overshoot.ai/v1 or /v1beta, or the
emulator). Everything above this module sees typed models and one error hierarchy; nothing
above it sees httpx, status codes or JSON.

The client is shared by every OvershootStream in the process (one connection pool); the
API key is passed per call because each resource may name its own key Secret.

Retries live here only where the contract allows them (see `_RETRY_POLICY`): GET, keepalive
and DELETE are safe to repeat; create is not idempotent and is only repeated when the
request provably never left this process (connection refused). Anything slower (backoff
across minutes, Retry-After, deadlines) is the caller's business.

Secrets: the API key is only ever placed in the Authorization header; publish and viewer
tokens are `SecretStr`; a camera source's URL (which may carry credentials) is only ever in
the body of its create request. Error messages and bodies carried by exceptions are
scrubbed of all of them.

Regions (v1beta): streams are regional. Every call for a stream names the region that
serves it (`X-Overshoot-Region`), learnt from the create answer's header; a 409
`region_error` naming another region is followed once, within the same call, and the
serving region of every answer is reported back on the result (`region`).

Transport: unless given an httpx client or transport, the client speaks httpx over aiohttp
(`default_transport()`). bench/api_client.py measured keepalives against the emulator
(client pinned to one CPU, pool of 100, a shared and busy machine): httpx's own transport
cost 1.7 ms CPU per request at 1 in flight, 5.7 ms at 32 and 5.9 ms at 256 (370, 130 and
112 req/s, p99 up to 9 s); httpx over aiohttp cost 1.0, 0.6 and 0.6 ms (357, 880 and
1546 req/s). The operator needs 100-200 req/s at 10,000 streams, which httpx's own pool
does not hold with margin under concurrency. The adapter is ours, not the httpx-aiohttp
package: that one (0.2) reports a connection the server dropped after reading the request
as `httpx.ConnectTimeout`, which made a create look unsent and be sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypeVar
from urllib.parse import unquote

import aiohttp
import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from overshoot_operator.limiter import Priority

__all__ = [
    "ApiKey",
    "CameraSource",
    "InvalidRequest",
    "KeepaliveResult",
    "NotFound",
    "OvershootClient",
    "OvershootError",
    "OvershootRejected",
    "OvershootUnavailable",
    "PaymentRequired",
    "PublishInfo",
    "RateLimited",
    "ServerPullUnsupported",
    "SourceUnusable",
    "StreamCreated",
    "StreamState",
    "Unauthorized",
    "UnexpectedResponse",
    "ViewerToken",
    "WrongRegion",
    "default_transport",
]

ApiKey = SecretStr

# Bodies are kept on errors for diagnosis, but a proxy's HTML page can be large.
_MAX_BODY_CHARS = 2000

REGION_HEADER = "X-Overshoot-Region"


# --------------------------------------------------------------------------------------
# Models, in the API's snake_case. Every optional field may be null or absent; unknown
# fields are ignored so a newer API cannot break an older operator.
# --------------------------------------------------------------------------------------


class _ApiModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class PublishInfo(_ApiModel):
    """Where and how to publish: a LiveKit room URL and a short-lived token."""

    type: str = "livekit"
    url: str
    token: SecretStr


class SourceInfo(_ApiModel):
    """The `source` of a stream Overshoot pulls itself; never the URL (it is not returned)."""

    type: str


class CameraSource(_ApiModel):
    """What a create asks Overshoot to pull (v1beta camera sources): `rtsp` or `hls`.

    The URL may carry the camera's credentials (`rtsp://user:pass@host/...`): it is sent in
    the create request's body and nowhere else, and scrubbed from anything an error keeps.
    """

    type: Literal["rtsp", "hls"]
    url: SecretStr

    def body(self) -> dict[str, Any]:
        return {"source": {"type": self.type, "url": self.url.get_secret_value()}}


class StreamCreated(_ApiModel):
    """201 of POST /streams. `publish` is null for a stream Overshoot pulls itself."""

    id: str
    state: str = "active"
    publish: PublishInfo | None = None
    source: SourceInfo | None = None
    expires_at_ms: int
    ttl_seconds: float | None = None
    # The serving region, from the answer's X-Overshoot-Region header (not the body).
    region: str | None = None


class KeepaliveResult(_ApiModel):
    """200 of POST /streams/{id}/keepalive: a renewed lease and a fresh token."""

    id: str
    expires_at_ms: int
    ttl_seconds: float | None = None
    # Guess: the docs show `publish` on every keepalive; tolerate its absence.
    publish: PublishInfo | None = None
    stream_time_ms: int | None = None
    region: str | None = None


class StreamState(_ApiModel):
    """200 of GET /streams/{id}. Only `id` and `state` are guaranteed."""

    id: str
    state: Literal["active", "ended"] | str
    stream_time_ms: int | None = None
    created_at_ms: int | None = None
    first_frame_at_ms: int | None = None
    last_frame_at_ms: int | None = None
    last_frame_index: int | None = None
    first_available_frame_index: int | None = None
    first_available_frame_at_ms: int | None = None
    recent_fps: float | None = None
    retained_frame_count: int | None = None
    evicted_frame_count: int | None = None
    expires_at_ms: int | None = None
    ttl_seconds: float | None = None
    ended_at_ms: int | None = None
    end_reason: str | None = None
    audio: bool | None = None
    # v1beta camera sources: ms of the last frame Overshoot pulled (written at most once a
    # second); null before the first, and always for client-published streams.
    last_pull: int | None = None
    source: SourceInfo | None = None
    region: str | None = None

    @property
    def ended(self) -> bool:
        return self.state == "ended"


class ViewerToken(_ApiModel):
    """A subscribe-only LiveKit grant to watch a stream's room (v1beta viewer tokens)."""

    url: str
    token: SecretStr
    expires_in_seconds: float | None = None


class _ViewerTokenAnswer(_ApiModel):
    # Guess: the shape is documented by its example only: {"view": {url, token, ...}}.
    view: ViewerToken


class _Deleted(_ApiModel):
    id: str | None = None
    deleted: bool = True


class _ValidationDetail(_ApiModel):
    loc: list[str | int] = Field(default_factory=list)
    msg: str = ""


# --------------------------------------------------------------------------------------
# Errors: one hierarchy for this boundary, mapped to conditions once, in the handler layer.
# --------------------------------------------------------------------------------------


class Endpoint(StrEnum):
    CREATE = "create"
    GET = "get"
    KEEPALIVE = "keepalive"
    DELETE = "delete"
    VIEWER_TOKEN = "viewer-token"  # noqa: S105 - an endpoint name


class OvershootError(Exception):
    """Any failure talking to Overshoot. Keeps status code and (scrubbed) body."""

    #: whether repeating the same call later may succeed without anyone changing anything
    retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        endpoint: Endpoint,
        status_code: int | None = None,
        body: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.status_code = status_code
        self.body = body
        self.detail = detail

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, endpoint={self.endpoint.value!r}, "
            f"status_code={self.status_code!r})"
        )


class OvershootUnavailable(OvershootError):
    """Network failure, timeout, 5xx or 503 (draining / starting up): try again later."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        request_sent: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        #: False only when the request provably never left this process
        self.request_sent = request_sent


class OvershootRejected(OvershootError):
    """A 4xx: the request was understood and refused."""

    retryable = False


class Unauthorized(OvershootRejected):
    """401/403: the API key is missing, invalid or not assigned. A user must fix it."""


class PaymentRequired(OvershootRejected):
    """402: the account has no credits. A user must fix it."""


class NotFound(OvershootRejected):
    """404: the stream ended (expired, deleted, reaped), is unknown, or is another key's."""


class InvalidRequest(OvershootRejected):
    """400/409/422: the request was malformed. A bug on our side, or an API change."""


class SourceUnusable(OvershootRejected):
    """422 to a create with a camera source: Overshoot could not open the URL (after its
    own ~15 s of retries), or refused it (a private address, a malformed URL). Repeating the
    same create cannot help; only a change of the URL, its credentials or its reachability."""

    @property
    def unreachable(self) -> bool:
        """Whether Overshoot tried and could not connect (rather than refusing the URL)."""
        # Guess: the detail text is only documented by example ("Could not connect to
        # source url (check reachability and credentials)").
        return "connect" in (self.detail or "").lower()


class ServerPullUnsupported(OvershootRejected):
    """A create asked Overshoot to pull a camera and got an ordinary stream back (with a
    publish token, without a source): the API at this URL does not know camera sources.
    Raised by the caller that released that stream again (leases.py)."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(
            f"Overshoot create ignored the camera source (made stream {stream_id} with a "
            "publish token instead)",
            endpoint=Endpoint.CREATE,
        )
        self.stream_id = stream_id


class WrongRegion(OvershootRejected):
    """409 `region_error`: the stream is served by another region than the one asked, and
    following the region the answer named did not help (or it named none)."""

    def __init__(self, message: str, *, expected_region: str | None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.expected_region = expected_region


class RateLimited(OvershootRejected):
    """429: too many streams or calls. `retry_after` in seconds when the server said."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class UnexpectedResponse(OvershootError):
    """A status code or body the contract does not describe (e.g. a proxy's HTML)."""


# --------------------------------------------------------------------------------------
# Retry policy: only what the contract allows.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """In-call retries for one endpoint. Callers schedule anything slower themselves."""

    attempts: int
    delay: float
    # Create is not idempotent: after the request may have reached the server, a retry can
    # make a second stream. Only errors raised before anything was sent are safe.
    only_unsent: bool = False


# The docs advise "about 3 tries, 1 s apart" for keepalive on network errors and 503.
_RETRY_POLICY: dict[Endpoint, RetryPolicy] = {
    Endpoint.CREATE: RetryPolicy(attempts=2, delay=1.0, only_unsent=True),
    Endpoint.GET: RetryPolicy(attempts=3, delay=1.0),
    Endpoint.KEEPALIVE: RetryPolicy(attempts=3, delay=1.0),
    Endpoint.DELETE: RetryPolicy(attempts=3, delay=1.0),
    Endpoint.VIEWER_TOKEN: RetryPolicy(attempts=2, delay=1.0),
}

# Raised before a byte of the request went out: safe to repeat even a create.
_UNSENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=15.0, write=10.0, pool=10.0)
# A create with a camera source answers only after Overshoot tried the URL: about 15 s of
# its own retries before a 422. The read timeout must outlast that, or a create that
# succeeded late would look lost.
PULL_CREATE_READ_TIMEOUT = 45.0

_Model = TypeVar("_Model", bound=BaseModel)
Sleep = Callable[[float], Awaitable[None]]
# Taken around every HTTP request (retries included): the caller's call limiter and
# leadership check. It may raise to refuse the request; nothing is sent then.
RequestGate = Callable[[Endpoint, Priority], AbstractAsyncContextManager[None]]
# Told the outcome of every HTTP request: "ok", the status code, or an error class.
Observer = Callable[[Endpoint, str], None]

# The priority of each endpoint's requests unless the caller says otherwise.
DEFAULT_PRIORITY: dict[Endpoint, Priority] = {
    Endpoint.KEEPALIVE: Priority.KEEPALIVE,
    Endpoint.DELETE: Priority.DELETE,
    Endpoint.GET: Priority.GET,
    Endpoint.CREATE: Priority.CREATE,
    Endpoint.VIEWER_TOKEN: Priority.GET,
}


@contextlib.asynccontextmanager
async def _open_gate(endpoint: Endpoint, priority: Priority) -> AsyncIterator[None]:
    yield


class RetryBudget:
    """In-call retries may add at most `ratio` of the recent successful requests (gRPC's
    retry throttling): in a brownout, when nearly every request fails, retries stop and
    the callers' own schedules decide, so failing calls never multiply the request rate."""

    def __init__(self, *, ratio: float = 0.1, capacity: float = 10.0) -> None:
        self._ratio = ratio
        self._capacity = capacity
        self._tokens = capacity

    def succeeded(self) -> None:
        self._tokens = min(self._capacity, self._tokens + self._ratio)

    def take(self) -> bool:
        # The epsilon absorbs float error: ten successes at 0.1 must make a whole token.
        if self._tokens >= 1.0 - 1e-9:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False


def default_transport(max_connections: int = 100) -> httpx.AsyncBaseTransport:
    """httpx over one aiohttp connection pool: several times less CPU per request."""
    return _AiohttpTransport(max_connections)


class _AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface on an aiohttp session; errors become httpx's, with
    "was anything sent?" kept exact, because create's retry policy depends on it."""

    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            # Made on first use: a session belongs to the running event loop.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                # httpx decodes the body itself from Content-Encoding.
                auto_decompress=False,
                # No HTTP(S)_PROXY from the environment: aiohttp looks it up on every request
                # (measured: +0.35 ms CPU each). Pass an httpx client to go through a proxy.
                trust_env=False,
            )
        timeout = request.extensions.get("timeout", {})
        pool, connect = timeout.get("pool"), timeout.get("connect")
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() != b"transfer-encoding"
        ]
        try:
            async with self._session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=await request.aread() or None,
                allow_redirects=False,
                # aiohttp has no write timeout; its `connect` includes the wait for the pool.
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=None if pool is None or connect is None else pool + connect,
                    sock_connect=connect,
                    sock_read=timeout.get("read"),
                ),
            ) as answer:
                content = await answer.read()
        # Order matters: subclasses first. Only the first two mean "nothing was sent".
        except aiohttp.ConnectionTimeoutError as err:
            raise httpx.ConnectTimeout(str(err), request=request) from err
        except aiohttp.ClientConnectorError as err:
            raise httpx.ConnectError(str(err), request=request) from err
        except (aiohttp.ServerTimeoutError, TimeoutError) as err:
            raise httpx.ReadTimeout(str(err) or "read timed out", request=request) from err
        except aiohttp.ServerDisconnectedError as err:
            raise httpx.RemoteProtocolError(str(err), request=request) from err
        except aiohttp.ClientResponseError as err:
            raise httpx.RemoteProtocolError(err.message, request=request) from err
        except aiohttp.ClientError as err:
            raise httpx.ReadError(str(err) or type(err).__name__, request=request) from err
        return httpx.Response(
            answer.status,
            headers=answer.raw_headers,
            content=content,
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (answer.reason or "").encode("latin-1"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class OvershootClient:
    """Async client of the Streams API, sharing one connection pool across API keys."""

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retries: dict[Endpoint, RetryPolicy] | None = None,
        sleep: Sleep = asyncio.sleep,
        max_connections: int = 100,
        gate: RequestGate = _open_gate,
        observe: Observer | None = None,
        retry_budget: RetryBudget | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            transport=transport or default_transport(max_connections),
            timeout=timeout,
            # Never follow a redirect with the Authorization header to wherever it points.
            follow_redirects=False,
        )
        self._retries = {**_RETRY_POLICY, **(retries or {})}
        self._sleep = sleep
        self._gate = gate
        self._observe = observe
        self._budget = retry_budget or RetryBudget()

    @property
    def base_url(self) -> str:
        return self._base_url

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> OvershootClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- the endpoints ----------------------------------------------------------------

    async def create_stream(
        self,
        api_key: ApiKey,
        *,
        source: CameraSource | None = None,
        region: str | None = None,
    ) -> StreamCreated:
        """POST /streams. Never repeated once the request may have reached the server.

        With `source`, Overshoot pulls that camera itself (v1beta): the answer has no
        `publish`; a URL it cannot open is `SourceUnusable`. `region` asks a region to
        create in; the result's `region` is the one that served the create.
        """
        secrets = Secrets(api_key, source)
        response = await self._call(
            Endpoint.CREATE,
            "POST",
            "/streams",
            secrets,
            region=region,
            body=source.body() if source is not None else {},
            read_timeout=PULL_CREATE_READ_TIMEOUT if source is not None else None,
        )
        if response.status_code not in (200, 201):
            raise self._error(Endpoint.CREATE, response, secrets, pulling=source is not None)
        created = self._parse(Endpoint.CREATE, response, StreamCreated, secrets)
        return created.model_copy(update={"region": _served_by(response, region)})

    async def get_stream(
        self,
        api_key: ApiKey,
        stream_id: str,
        *,
        priority: Priority | None = None,
        region: str | None = None,
    ) -> StreamState:
        """GET /streams/{id}. Raises NotFound once the tombstone is gone."""
        secrets = Secrets(api_key)
        response = await self._call(
            Endpoint.GET, "GET", f"/streams/{stream_id}", secrets, priority=priority, region=region
        )
        if response.status_code != 200:
            raise self._error(Endpoint.GET, response, secrets)
        state = self._parse(Endpoint.GET, response, StreamState, secrets)
        return state.model_copy(update={"region": _served_by(response, region)})

    async def keepalive(
        self, api_key: ApiKey, stream_id: str, *, region: str | None = None
    ) -> KeepaliveResult:
        """POST /streams/{id}/keepalive. NotFound means the stream ended: create a new one."""
        secrets = Secrets(api_key)
        response = await self._call(
            Endpoint.KEEPALIVE, "POST", f"/streams/{stream_id}/keepalive", secrets, region=region
        )
        if response.status_code != 200:
            raise self._error(Endpoint.KEEPALIVE, response, secrets)
        result = self._parse(Endpoint.KEEPALIVE, response, KeepaliveResult, secrets)
        return result.model_copy(update={"region": _served_by(response, region)})

    async def delete_stream(
        self, api_key: ApiKey, stream_id: str, *, region: str | None = None
    ) -> bool:
        """DELETE /streams/{id}. True if it was deleted now, False if it was already gone.

        404 counts as success: deletes are "idempotent within the lookup window" and a
        stream that is unknown, ended or tombstoned holds nothing we could release.
        """
        secrets = Secrets(api_key)
        response = await self._call(
            Endpoint.DELETE, "DELETE", f"/streams/{stream_id}", secrets, region=region
        )
        if response.status_code == 404:
            return False
        if response.status_code not in (200, 202, 204):
            raise self._error(Endpoint.DELETE, response, secrets)
        if response.status_code == 200 and response.content:
            # Parsed only to notice a contract change; the answer is already known.
            self._parse(Endpoint.DELETE, response, _Deleted, secrets)
        return True

    async def viewer_token(
        self, api_key: ApiKey, stream_id: str, *, region: str | None = None
    ) -> ViewerToken:
        """POST /streams/{id}/viewer-token: a subscribe-only grant to the stream's room
        (v1beta). NotFound for an ended or unknown stream, or another key's."""
        secrets = Secrets(api_key)
        response = await self._call(
            Endpoint.VIEWER_TOKEN,
            "POST",
            f"/streams/{stream_id}/viewer-token",
            secrets,
            region=region,
            body={},
        )
        if response.status_code not in (200, 201):
            raise self._error(Endpoint.VIEWER_TOKEN, response, secrets)
        return self._parse(Endpoint.VIEWER_TOKEN, response, _ViewerTokenAnswer, secrets).view

    # ---- plumbing --------------------------------------------------------------------

    async def _call(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        secrets: Secrets,
        *,
        priority: Priority | None = None,
        region: str | None = None,
        body: dict[str, Any] | None = None,
        read_timeout: float | None = None,
    ) -> httpx.Response:
        policy = self._retries[endpoint]
        priority = DEFAULT_PRIORITY[endpoint] if priority is None else priority
        attempt = 0
        followed = False
        while True:
            attempt += 1
            try:
                async with self._gate(endpoint, priority):
                    response = await self._send(
                        endpoint, method, path, secrets, region, body, read_timeout
                    )
            except OvershootUnavailable as err:
                self._observed(endpoint, type(err).__name__)
                if (
                    attempt >= policy.attempts
                    or (policy.only_unsent and err.request_sent)
                    or not self._budget.take()
                ):
                    raise
                await self._sleep(_jittered(policy.delay))
                continue
            self._observed(endpoint, "ok" if response.is_success else str(response.status_code))
            if response.is_success or response.status_code < 500:
                self._budget.succeeded()
            if response.status_code == 409 and not followed:
                expected = _region_error(response)[1]
                if expected is not None and expected != region:
                    # The stream lives in another region than the one asked (or than the
                    # one a request without the header reached): ask that one, once.
                    followed = True
                    region = expected
                    continue
            if (
                response.status_code in (502, 503, 504)
                and not policy.only_unsent
                and attempt < policy.attempts
            ):
                retry_after = _retry_after(response)
                # A server asking for a long pause is not ours to wait out inside one call.
                if (retry_after is None or retry_after <= policy.delay * 2) and self._budget.take():
                    await self._sleep(_jittered(retry_after or policy.delay))
                    continue
            return response

    def _observed(self, endpoint: Endpoint, outcome: str) -> None:
        if self._observe is not None:
            self._observe(endpoint, outcome)

    async def _send(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        secrets: Secrets,
        region: str | None,
        body: dict[str, Any] | None,
        read_timeout: float | None,
    ) -> httpx.Response:
        headers = {
            "Authorization": f"Bearer {secrets.api_key.get_secret_value()}",
            "Accept": "application/json",
        }
        if region:
            headers[REGION_HEADER] = region
        content: bytes | None = None
        if method == "POST":
            # The docs send no body; Overshoot's own client sends {}. Send {} (or the
            # create's options).
            headers["Content-Type"] = "application/json"
            content = json.dumps(body or {}).encode()
        extensions: dict[str, Any] = {}
        if read_timeout is not None:
            timeout = self._http.timeout
            extensions["timeout"] = httpx.Timeout(
                connect=timeout.connect, read=read_timeout, write=timeout.write, pool=timeout.pool
            ).as_dict()
        try:
            return await self._http.request(
                method,
                self._base_url + path,
                headers=headers,
                content=content,
                extensions=extensions or None,
            )
        except httpx.TransportError as err:
            text = str(err)
            clean = secrets.scrub(text)
            error = OvershootUnavailable(
                f"Overshoot {endpoint.value} failed: {type(err).__name__}: "
                f"{clean or 'connection error'}",
                endpoint=endpoint,
                request_sent=not isinstance(err, _UNSENT_ERRORS),
            )
            # Chain the transport error for its traceback, unless its own text carries a
            # secret: a logged traceback prints every link of the chain.
            raise error from (err if clean == text else None)

    def _parse(
        self, endpoint: Endpoint, response: httpx.Response, model: type[_Model], secrets: Secrets
    ) -> _Model:
        try:
            return model.model_validate_json(response.content)
        except (ValidationError, ValueError) as err:
            problems = (
                "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}"
                    for e in (err.errors() if isinstance(err, ValidationError) else [])
                )
                or "not JSON"
            )
            # `from None`: pydantic's error repeats the input, which may hold a token.
            raise UnexpectedResponse(
                f"Overshoot {endpoint.value} answered {response.status_code} with a body that "
                f"does not match the contract ({secrets.scrub(problems)[:300]})",
                endpoint=endpoint,
                status_code=response.status_code,
                body=_body_text(response, secrets),
            ) from None

    def _error(
        self,
        endpoint: Endpoint,
        response: httpx.Response,
        secrets: Secrets,
        *,
        pulling: bool = False,
    ) -> OvershootError:
        code = response.status_code
        body = _body_text(response, secrets)
        detail = _detail(response, secrets)
        said = f": {detail}" if detail else ""
        kw: dict[str, Any] = {
            "endpoint": endpoint,
            "status_code": code,
            "body": body,
            "detail": detail,
        }
        what = f"Overshoot {endpoint.value} answered {code}"
        if code in (401, 403):
            return Unauthorized(
                f"{what}: the API key is missing, invalid or not assigned{said}", **kw
            )
        if code == 402:
            return PaymentRequired(f"{what}: the account has insufficient credits{said}", **kw)
        if code == 404:
            return NotFound(f"{what}: the stream has ended or does not exist{said}", **kw)
        if code == 429:
            return RateLimited(
                f"{what}: rate or stream limit reached{said}",
                retry_after=_retry_after(response),
                **kw,
            )
        if code == 409:
            is_region_error, expected = _region_error(response)
            if is_region_error:
                where = f" (it names region {expected!r})" if expected else ""
                return WrongRegion(
                    f"{what}: the stream is served by another region{where}{said}",
                    expected_region=expected,
                    **kw,
                )
        if code == 422 and pulling:
            return SourceUnusable(f"{what}: Overshoot cannot pull the camera{said}", **kw)
        if code in (400, 409, 422):
            return InvalidRequest(f"{what}: the request was refused{said}", **kw)
        if code >= 500:
            return OvershootUnavailable(
                f"{what}: the service is unavailable{said}",
                retry_after=_retry_after(response),
                **kw,
            )
        return UnexpectedResponse(f"{what}, which the contract does not describe{said}", **kw)


class Secrets:
    """Everything a call must keep out of what it raises: the API key, and a camera
    source's URL with any credentials in it (whole, and its userinfo alone)."""

    def __init__(self, api_key: ApiKey, source: CameraSource | None = None) -> None:
        self.api_key = api_key
        values = [api_key.get_secret_value()]
        if source is not None:
            url = source.url.get_secret_value()
            values.append(url)
            userinfo = _userinfo(url)
            if userinfo:
                values += [userinfo, unquote(userinfo)]
                _, _, password = userinfo.partition(":")
                values += [password, unquote(password)]
        # Longest first: a URL is scrubbed whole before a password inside it.
        self._values = sorted({v for v in values if len(v) >= 3}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._values:
            text = text.replace(secret, "***")
        return text


def _userinfo(url: str) -> str:
    """The `user:password` part of a URL, as written (still percent-encoded)."""
    _, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0] if sep else ""
    userinfo, at, _ = authority.rpartition("@")
    return userinfo if at else ""


def _served_by(response: httpx.Response, asked: str | None) -> str | None:
    """The region that answered: its X-Overshoot-Region header, else the one asked."""
    return response.headers.get(REGION_HEADER) or asked


# Guess: the body of a 409 region_error is undocumented beyond "naming the expected or
# requested region". Accept it at the top level or under "detail", and the region under
# any of these keys, the expected region first.
_REGION_KEYS = ("expected_region", "stream_region", "correct_region", "region")
_REGION = re.compile(r"[a-z][a-z0-9-]{1,62}")


def _region_error(response: httpx.Response) -> tuple[bool, str | None]:
    """(whether a 409 is a region_error, the region it says serves the stream)."""
    try:
        parsed = response.json()
    except ValueError:
        return False, None
    for candidate in (parsed, parsed.get("detail") if isinstance(parsed, dict) else None):
        if not isinstance(candidate, dict):
            continue
        kind = candidate.get("error") or candidate.get("type") or candidate.get("code")
        if kind != "region_error":
            continue
        for key in _REGION_KEYS:
            value = candidate.get(key)
            if isinstance(value, str) and _REGION.fullmatch(value):
                return True, value
        return True, None
    return False, None


def _jittered(delay: float) -> float:
    return delay * random.uniform(0.8, 1.2)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from Retry-After (delta-seconds only; dates are ignored), else, on a
    429, from `x-ratelimit-reset`."""
    value = response.headers.get("retry-after")
    if value is not None:
        with contextlib.suppress(ValueError):
            seconds = float(value.strip())
            if seconds >= 0:
                return seconds
        return None
    reset = response.headers.get("x-ratelimit-reset")
    if reset is None or response.status_code != 429:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(reset.strip())
        # Guess: documented for inference without a unit; seconds until the reset, as
        # the emulator sends. A value this large is a time, not a wait: not ours to use.
        if 0 <= seconds <= 3600:
            return seconds
    return None


def _scrub_tokens(value: Any) -> Any:
    """Blank every `token` field of a parsed body before it is kept on an error."""
    if isinstance(value, dict):
        return {
            k: ("***" if k == "token" and isinstance(v, str) else _scrub_tokens(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrub_tokens(v) for v in value]
    return value


_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def _body_text(response: httpx.Response, secrets: Secrets) -> str:
    try:
        parsed = response.json()
    except ValueError:
        # A proxy's page could quote a token we never parsed: blank anything shaped like
        # a JWT (LiveKit tokens are JWTs) and keep only a prefix.
        text = _JWT_LIKE.sub("***", response.text[:_MAX_BODY_CHARS])
        return secrets.scrub(text)
    return secrets.scrub(json.dumps(_scrub_tokens(parsed))[:_MAX_BODY_CHARS])


def _detail(response: httpx.Response, secrets: Secrets) -> str | None:
    """The human text of an error body, from either documented shape, or None.

    Shapes: `{"detail": "text"}`, FastAPI's `{"detail": [{"loc", "msg", "type"}]}`, and
    `{"error": "validation_error", "message": ..., "details": [...]}`.
    """
    try:
        parsed = response.json()
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    detail = parsed.get("detail")
    text: str | None = None
    if isinstance(detail, str):
        text = detail
    elif isinstance(detail, list):
        parts = []
        for item in detail:
            try:
                entry = _ValidationDetail.model_validate(item)
            except ValidationError:
                continue
            where = ".".join(str(p) for p in entry.loc)
            parts.append(f"{where}: {entry.msg}" if where else entry.msg)
        text = "; ".join(parts) or None
    elif isinstance(parsed.get("message"), str):
        text = parsed["message"]
    if text is None:
        return None
    return secrets.scrub(text)[:500]
