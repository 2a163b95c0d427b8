"""The four Overshoot stream endpoints, served under `/v1` and `/v1beta`.

Thin handlers: count the call, apply any queued fault, authenticate, then one store
operation and one JSON answer. Shapes and codes follow the documented Overshoot API;
every choice the public docs leave open is marked as a guess. This is the hot path of the load
benchmark, so nothing here is worse than O(log n) in the number of streams.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from overshoot_emulator.config import fingerprint, key_digest
from overshoot_emulator.faults import ANONYMOUS, Endpoint
from overshoot_emulator.state import EMULATOR, Abort, Emulator, detail, format_seconds
from overshoot_emulator.store import LimitReached, StoreError, Stream

API_PREFIXES = ("/v1", "/v1beta")

# Guess: detail strings are undocumented; clients must not depend on them.
NOT_FOUND = "Stream not found"
UNAUTHORIZED = "Invalid or missing API key"


def ttl_json(stream: Stream) -> int | float:
    ttl = stream.ttl_seconds
    return int(ttl) if ttl.is_integer() else ttl


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
    }


async def admit(request: web.Request, endpoint: Endpoint) -> tuple[Emulator, str]:
    """Count the call, wait the steady latency, apply a queued fault, authenticate; the
    owner's key digest."""
    emulator = request.app[EMULATOR]
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
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = format_seconds(fault.retry_after)
            if content_type:
                headers["Content-Type"] = content_type
            raise Abort(web.Response(status=fault.status, body=body, headers=headers))
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
    # The body is read before any latency, as a real server has the request in hand before
    # it works on it: a client that goes away while the create is slow (a killed operator)
    # still gets its stream made, the case a lost create response stands for.
    raw = await request.read() if request.can_read_body else b""
    emulator, owner = await admit(request, "create")
    _check_optional_object(raw)
    try:
        stream = emulator.store.create(owner)
    except LimitReached as exc:
        # Guess: v1 documents no cap; an older API answered 429 past 5 streams per key.
        raise Abort(
            detail(429, str(exc), {"Retry-After": format_seconds(exc.retry_after)})
        ) from exc
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


async def get_stream(request: web.Request) -> web.Response:
    emulator, owner = await admit(request, "get")
    stream = _lookup(emulator, request, owner)
    return web.json_response(stream_document(stream, emulator.store.now_ms()))


async def keep_stream_alive(request: web.Request) -> web.Response:
    emulator, owner = await admit(request, "keepalive")
    try:
        stream = emulator.store.keepalive(request.match_info["stream_id"], owner)
    except StoreError as exc:
        # Documented: 404 once ended (expired, deleted, reaped) or unknown.
        raise Abort(detail(404, NOT_FOUND)) from exc
    grant = emulator.minter.mint(stream.id)
    return web.json_response(
        {
            "id": stream.id,
            "expires_at_ms": stream.expires_at_ms,
            "ttl_seconds": ttl_json(stream),
            "publish": grant.as_json(),
            "stream_time_ms": stream.stream_time_ms(),
        }
    )


async def delete_stream(request: web.Request) -> web.Response:
    emulator, owner = await admit(request, "delete")
    try:
        stream = emulator.store.delete(request.match_info["stream_id"], owner)
    except StoreError as exc:
        raise Abort(detail(404, NOT_FOUND)) from exc
    return web.json_response({"id": stream.id, "deleted": True})


def _lookup(emulator: Emulator, request: web.Request, owner: str) -> Stream:
    # Guess: a malformed id is simply unknown (404), not a 422 from UUID validation.
    try:
        return emulator.store.lookup(request.match_info["stream_id"], owner)
    except StoreError as exc:
        raise Abort(detail(404, NOT_FOUND)) from exc


def _check_optional_object(raw: bytes) -> None:
    # The docs send no body, Overshoot's own client sends `{}`: accept both, and any
    # object (there are no create options to read). Anything else is a validation error.
    if not raw.strip():
        return
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise Abort(detail(422, "Request body is not valid JSON")) from exc
    if not isinstance(body, dict):
        raise Abort(detail(422, "Request body must be a JSON object"))


def add_routes(app: web.Application) -> None:
    for prefix in API_PREFIXES:
        app.router.add_post(f"{prefix}/streams", create_stream)
        app.router.add_get(f"{prefix}/streams/{{stream_id}}", get_stream)
        app.router.add_post(f"{prefix}/streams/{{stream_id}}/keepalive", keep_stream_alive)
        app.router.add_delete(f"{prefix}/streams/{{stream_id}}", delete_stream)
