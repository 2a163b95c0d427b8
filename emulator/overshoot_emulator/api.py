"""The Overshoot stream endpoints, served under `/v1` and `/v1beta`.

Thin handlers: count the call, apply any queued fault, settle the serving region,
authenticate, then one store operation and one JSON answer. Shapes and codes follow the
documented Overshoot API; every choice the public docs leave open is marked as a guess.
This is the hot path of the load benchmark, so nothing here is worse than O(log n) in the
number of streams, and a create without a `source` resolves no name, starts no thread and
loads no media library.

v1beta additions served here: camera sources on create (pull.py does the pulling), viewer
tokens, regions (the `X-Overshoot-Region` header on every answer, 409 `region_error` for a
wrong one) and rate-limit headers on every 429.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from overshoot_emulator.config import fingerprint, key_digest
from overshoot_emulator.faults import ANONYMOUS, Endpoint, rate_limit_headers
from overshoot_emulator.pull import PullsClosed, SourceRefused
from overshoot_emulator.regions import HEADER as REGION_HEADER
from overshoot_emulator.regions import unknown_region_body, wrong_region_body
from overshoot_emulator.sources import SourceInvalid, SourceSpec, parse_source
from overshoot_emulator.state import EMULATOR, Abort, Emulator, detail
from overshoot_emulator.store import LimitReached, StoreError, Stream, WrongRegion

API_PREFIXES = ("/v1", "/v1beta")

# Guess: detail strings are undocumented; clients must not depend on them.
NOT_FOUND = "Stream not found"
UNAUTHORIZED = "Invalid or missing API key"
SHUTTING_DOWN = "Service is shutting down"

# The region that serves a request, settled once per request by `admit`.
REGION = web.RequestKey("overshoot_region", str)


def ttl_json(stream: Stream) -> int | float:
    ttl = stream.ttl_seconds
    return int(ttl) if ttl.is_integer() else ttl


def source_json(stream: Stream) -> dict[str, str] | None:
    # Documented: the URL is never returned in any response (it carries credentials).
    return None if stream.source is None else {"type": stream.source.type}


def stream_document(stream: Stream, now_ms: int) -> dict[str, Any]:
    """GET /streams/{id}: every field the docs show (only id and state are guaranteed)."""
    frames = stream.frames(now_ms)
    return {
        "id": stream.id,
        "state": stream.state,
        "stream_time_ms": frames.stream_time_ms,
        "created_at_ms": stream.created_at_ms,
        "first_frame_at_ms": frames.first_frame_at_ms,
        "last_frame_at_ms": frames.last_frame_at_ms,
        "last_frame_index": frames.last_frame_index,
        "first_available_frame_index": frames.first_available_frame_index,
        "first_available_frame_at_ms": frames.first_available_frame_at_ms,
        "recent_fps": frames.recent_fps,
        "retained_frame_count": frames.retained_frame_count,
        "evicted_frame_count": frames.evicted_frame_count,
        "expires_at_ms": stream.expires_at_ms,
        "ttl_seconds": ttl_json(stream),
        "ended_at_ms": stream.ended_at_ms,
        "end_reason": stream.end_reason,
        # Only video is ingested (documented).
        "audio": False,
        # Documented (v1beta): always null for client-published streams.
        "last_pull": stream.last_pull_ms,
        "source": source_json(stream),
    }


async def admit(request: web.Request, endpoint: Endpoint) -> tuple[Emulator, str]:
    """Count the call, wait the steady latency, apply a queued fault, authenticate; the
    owner's key digest."""
    emulator = request.app[EMULATOR]
    requested_region = request.headers.get(REGION_HEADER)
    # Settled before anything can wait, so that the answer names the region that took the
    # request even if the default region moves meanwhile.
    request[REGION] = emulator.regions.serving(requested_region)
    digest = _bearer_digest(request)
    emulator.calls.count(endpoint, fingerprint(digest) if digest else ANONYMOUS)
    if emulator.config.latency_ms:
        await asyncio.sleep(emulator.config.latency_ms / 1000)
    fault = emulator.faults.take(endpoint, digest)
    if fault is not None:
        if fault.latency_ms:
            await asyncio.sleep(fault.latency_ms / 1000)
        if fault.drop:
            # Close without a byte of answer; aiohttp then fails quietly to send the
            # placeholder response below, which is exactly a dropped connection.
            if request.transport is not None:
                request.transport.close()
            raise Abort(web.Response(status=500))
        if fault.status is not None:
            body, content_type = fault.response_body()
            headers = fault.headers()
            if content_type:
                headers["Content-Type"] = content_type
            raise Abort(web.Response(status=fault.status, body=body, headers=headers))
    if requested_region is not None and emulator.regions.unknown(requested_region):
        # Guess: a request naming an unknown region is a routing error, answered before
        # authentication (as an edge proxy would).
        raise Abort(web.json_response(unknown_region_body(requested_region), status=409))
    # Keys are never checked for a prefix (`ovs-` and `ovs_` both exist).
    if digest is None or not emulator.config.accepts(digest):
        raise Abort(detail(401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"}))
    return emulator, digest


def _bearer_digest(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key_digest(key)


async def create_stream(request: web.Request) -> web.Response:
    return await _create(request, sources=False)


async def create_stream_v1beta(request: web.Request) -> web.Response:
    return await _create(request, sources=True)


async def _create(request: web.Request, *, sources: bool) -> web.Response:
    # The body is read before any latency, as a real server has the request in hand before
    # it works on it: a client that goes away while the create is slow (a killed operator)
    # still gets its stream made, the case a lost create response stands for.
    raw = await request.read() if request.can_read_body else b""
    emulator, owner = await admit(request, "create")
    body = _optional_object(raw)
    # Guess: `/v1` predates camera sources; the conservative reading is that it ignores a
    # `source` field (as it ignores any other) and makes a client-published stream.
    spec = _source(body) if sources and body else None
    region = request[REGION]
    try:
        if spec is not None:
            return await _create_pulled(emulator, owner, region, spec)
        stream = emulator.store.create(owner, region=region)
    except LimitReached as exc:
        # Guess: v1 documents no cap; an older API answered 429 past 5 streams per key.
        headers = rate_limit_headers(exc.retry_after, limit=exc.max_streams, remaining=0)
        raise Abort(detail(429, str(exc), headers)) from exc
    grant = emulator.minter.mint(stream.id)
    return web.json_response(
        {
            "id": stream.id,
            "state": stream.state,
            "publish": grant.as_json(),
            "expires_at_ms": stream.expires_at_ms,
            "ttl_seconds": ttl_json(stream),
        },
        status=201,
    )


async def _create_pulled(
    emulator: Emulator, owner: str, region: str, spec: SourceSpec
) -> web.Response:
    try:
        stream = await emulator.pulls.create(owner, region, spec)
    except SourceRefused as exc:
        # Documented: 422 once the source could not be opened within ~15 s of retries.
        raise Abort(detail(422, exc.detail)) from exc
    except PullsClosed as exc:
        # Documented: 503 while the service drains; retried with backoff by clients.
        raise Abort(detail(503, SHUTTING_DOWN)) from exc
    return web.json_response(
        {
            "id": stream.id,
            "state": stream.state,
            # Documented: the emulator pulls the video itself, nobody publishes.
            "publish": None,
            "source": source_json(stream),
            "expires_at_ms": stream.expires_at_ms,
            "ttl_seconds": ttl_json(stream),
        },
        status=201,
    )


async def get_stream(request: web.Request) -> web.Response:
    emulator, owner = await admit(request, "get")
    stream = _lookup(emulator, request, owner)
    return web.json_response(stream_document(stream, emulator.store.now_ms()))


async def keep_stream_alive(request: web.Request) -> web.Response:
    emulator, owner = await admit(request, "keepalive")
    try:
        stream = emulator.store.keepalive(request.match_info["stream_id"], owner, request[REGION])
    except WrongRegion as exc:
        raise _wrong_region(request, exc) from exc
    except StoreError as exc:
        # Documented: 404 once ended (expired, deleted, reaped) or unknown.
        raise Abort(detail(404, NOT_FOUND)) from exc
    return web.json_response(
        {
            "id": stream.id,
            "expires_at_ms": stream.expires_at_ms,
            "ttl_seconds": ttl_json(stream),
            # Documented: a pulled stream's keepalive answers `"publish": null` too.
            "publish": None
            if stream.source is not None
            else emulator.minter.mint(stream.id).as_json(),
            "stream_time_ms": stream.stream_time_ms(),
        }
    )


async def delete_stream(request: web.Request) -> web.Response:
    emulator, owner = await admit(request, "delete")
    try:
        # Ending the stream also stops its pull, if any (documented: DELETE stops the pull).
        stream = emulator.store.delete(request.match_info["stream_id"], owner, request[REGION])
    except WrongRegion as exc:
        raise _wrong_region(request, exc) from exc
    except StoreError as exc:
        raise Abort(detail(404, NOT_FOUND)) from exc
    return web.json_response({"id": stream.id, "deleted": True})


async def viewer_token(request: web.Request) -> web.Response:
    emulator, owner = await admit(request, "viewer_token")
    stream = _lookup(emulator, request, owner)
    if stream.state != "active":
        # Guess: undocumented for an ended stream; no room to view, so not found.
        raise Abort(detail(404, NOT_FOUND))
    return web.json_response({"view": emulator.minter.mint_viewer(stream.id).as_json()})


def _lookup(emulator: Emulator, request: web.Request, owner: str) -> Stream:
    # Guess: a malformed id is simply unknown (404), not a 422 from UUID validation.
    try:
        return emulator.store.lookup(request.match_info["stream_id"], owner, request[REGION])
    except WrongRegion as exc:
        raise _wrong_region(request, exc) from exc
    except StoreError as exc:
        raise Abort(detail(404, NOT_FOUND)) from exc


def _wrong_region(request: web.Request, exc: WrongRegion) -> Abort:
    body = wrong_region_body(request.match_info["stream_id"], exc.expected, request[REGION])
    return Abort(web.json_response(body, status=409))


def _optional_object(raw: bytes) -> dict[str, Any] | None:
    # The docs send no body, Overshoot's own client sends `{}`: accept both, and any
    # object. Anything else is a validation error.
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise Abort(detail(422, "Request body is not valid JSON")) from exc
    if not isinstance(body, dict):
        raise Abort(detail(422, "Request body must be a JSON object"))
    return body


def _source(body: dict[str, Any]) -> SourceSpec | None:
    try:
        return parse_source(body)
    except SourceInvalid as exc:
        # FastAPI's shape, without the input: a source URL carries credentials.
        raise Abort(detail(422, exc.errors)) from exc


async def add_region_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: documented, every answer carries its serving region."""
    if request.path.startswith(API_PREFIXES):
        region = request.get(REGION)
        if region is None:  # answered before `admit` (an unknown path, a wrong method)
            region = request.app[EMULATOR].regions.serving(request.headers.get(REGION_HEADER))
        response.headers[REGION_HEADER] = region


def add_routes(app: web.Application) -> None:
    for prefix in API_PREFIXES:
        create = create_stream_v1beta if prefix == "/v1beta" else create_stream
        app.router.add_post(f"{prefix}/streams", create)
        app.router.add_get(f"{prefix}/streams/{{stream_id}}", get_stream)
        app.router.add_post(f"{prefix}/streams/{{stream_id}}/keepalive", keep_stream_alive)
        app.router.add_delete(f"{prefix}/streams/{{stream_id}}", delete_stream)
        app.router.add_post(f"{prefix}/streams/{{stream_id}}/viewer-token", viewer_token)
    app.on_response_prepare.append(add_region_header)
