"""The test-only admin surface under `/_emulator/` (no auth, JSON in and out).

Lets tests and demos see and steer what the real service keeps hidden: list streams,
create one in a given region, reap one, fake frames, cap streams per key, queue faults,
read call counts, move the default region, see the camera pulls, reset.
Nothing here is part of the Overshoot contract; listing is O(n) and that is fine here.
A source URL never appears here: a pulled stream shows its source's type and host only.
"""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from overshoot_emulator.api import stream_document
from overshoot_emulator.config import key_digest, key_fingerprint
from overshoot_emulator.faults import Fault
from overshoot_emulator.state import EMULATOR, Abort, detail
from overshoot_emulator.store import Limit, LimitReached, Stream, StreamEnded, StreamNotFound

PREFIX = "/_emulator"

Model = TypeVar("Model", bound=BaseModel)


class FramesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=1, le=10_000_000)
    # Bounded so one call costs at most retention (600 s) x fps frame entries.
    fps: float = Field(default=25.0, gt=0, le=240)


class LimitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(min_length=1, repr=False)
    max_streams: int | None = Field(ge=0)
    retry_after: float = Field(default=1.0, ge=0)


class CreateStreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(min_length=1, repr=False)
    # The default region when absent.
    region: str | None = None


class RegionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    region: str


def admin_document(stream: Stream, now_ms: int) -> dict[str, Any]:
    frames = stream.frames(now_ms)
    return {
        "id": stream.id,
        "state": stream.state,
        "owner": stream.owner_fingerprint,
        "room": stream.room,
        "region": stream.region,
        "source_type": stream.source.type if stream.source else None,
        "source_host": stream.source.host if stream.source else None,
        "last_pull": stream.last_pull_ms,
        "created_at_ms": stream.created_at_ms,
        "expires_at_ms": stream.expires_at_ms,
        "ttl_seconds": stream.ttl_seconds,
        "ended_at_ms": stream.ended_at_ms,
        "end_reason": stream.end_reason,
        "keepalives": stream.keepalives,
        "last_frame_index": frames.last_frame_index,
        "last_frame_at_ms": frames.last_frame_at_ms,
        "recent_fps": frames.recent_fps,
    }


async def _parse(request: web.Request, model: type[Model]) -> Model:
    try:
        return model.model_validate_json(await request.read() or b"{}")
    except ValidationError as exc:
        # No input echo: a limit or fault body may carry a raw API key.
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        raise Abort(detail(422, errors)) from exc


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "streams": len(request.app[EMULATOR].store)})


async def list_streams(request: web.Request) -> web.Response:
    store = request.app[EMULATOR].store
    state = request.query.get("state")
    if state not in (None, "active", "ended"):
        raise Abort(detail(422, "state must be active or ended"))
    now = store.now_ms()
    streams = [
        admin_document(stream, now)
        for stream in store.streams()
        if state is None or stream.state == state
    ]
    return web.json_response({"streams": streams})


async def create_stream(request: web.Request) -> web.Response:
    """A client-published stream for `api_key` in `region`, as if that region created it."""
    emulator = request.app[EMULATOR]
    body = await _parse(request, CreateStreamRequest)
    region = emulator.regions.default if body.region is None else body.region
    if region not in emulator.regions:
        raise Abort(detail(422, f"Unknown region {region!r}"))
    try:
        stream = emulator.store.create(key_digest(body.api_key), region=region)
    except LimitReached as exc:
        raise Abort(detail(429, str(exc))) from exc
    return web.json_response(admin_document(stream, emulator.store.now_ms()), status=201)


async def reap_stream(request: web.Request) -> web.Response:
    store = request.app[EMULATOR].store
    try:
        stream = store.reap(request.match_info["stream_id"])
    except StreamNotFound as exc:
        raise Abort(detail(404, "Stream not found")) from exc
    except StreamEnded as exc:
        raise Abort(detail(409, "Stream already ended")) from exc
    return web.json_response(admin_document(stream, store.now_ms()))


async def record_frames(request: web.Request) -> web.Response:
    store = request.app[EMULATOR].store
    body = await _parse(request, FramesRequest)
    try:
        stream = store.record_frame_run(request.match_info["stream_id"], body.count, body.fps)
    except StreamNotFound as exc:
        raise Abort(detail(404, "Stream not found")) from exc
    except StreamEnded as exc:
        raise Abort(detail(409, "Stream already ended: frames are no longer accepted")) from exc
    return web.json_response(stream_document(stream, store.now_ms()))


async def put_limit(request: web.Request) -> web.Response:
    store = request.app[EMULATOR].store
    body = await _parse(request, LimitRequest)
    limit = None if body.max_streams is None else Limit(body.max_streams, body.retry_after)
    store.set_limit(key_digest(body.api_key), limit)
    return web.json_response(
        {
            "owner": key_fingerprint(body.api_key),
            "max_streams": body.max_streams,
            "retry_after": body.retry_after,
        }
    )


async def add_fault(request: web.Request) -> web.Response:
    faults = request.app[EMULATOR].faults
    fault = await _parse(request, Fault)
    faults.add(fault, None if fault.api_key is None else key_digest(fault.api_key))
    return web.json_response({"faults": faults.pending()}, status=201)


async def list_faults(request: web.Request) -> web.Response:
    return web.json_response({"faults": request.app[EMULATOR].faults.pending()})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[EMULATOR].faults.clear()
    return web.json_response({"faults": []})


async def get_calls(request: web.Request) -> web.Response:
    calls = request.app[EMULATOR].calls
    api_key = request.query.get("api_key")
    if api_key is not None:
        per_endpoint = calls.for_key(key_fingerprint(api_key))
        return web.json_response({"calls": per_endpoint, "total": sum(per_endpoint.values())})
    return web.json_response({"calls": calls.by_key(), "total": calls.total()})


async def reset_calls(request: web.Request) -> web.Response:
    request.app[EMULATOR].calls.reset()
    return web.json_response({"total": 0})


def _region_document(request: web.Request) -> web.Response:
    regions = request.app[EMULATOR].regions
    return web.json_response({"region": regions.default, "regions": list(regions.names)})


async def get_region(request: web.Request) -> web.Response:
    return _region_document(request)


async def put_region(request: web.Request) -> web.Response:
    """Move the default region: requests without a region header now reach this one (what
    geo-routing does to a client that moved)."""
    body = await _parse(request, RegionRequest)
    try:
        request.app[EMULATOR].regions.set_default(body.region)
    except ValueError as exc:
        raise Abort(detail(422, str(exc))) from exc
    return _region_document(request)


async def list_pulls(request: web.Request) -> web.Response:
    return web.json_response(request.app[EMULATOR].pulls.status())


async def expire_now(request: web.Request) -> web.Response:
    return web.json_response({"ended": request.app[EMULATOR].store.expire_due()})


async def reset(request: web.Request) -> web.Response:
    request.app[EMULATOR].reset()
    return web.json_response({"reset": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/healthz", healthz)
    app.router.add_get(f"{PREFIX}/streams", list_streams)
    app.router.add_post(f"{PREFIX}/streams", create_stream)
    app.router.add_post(f"{PREFIX}/streams/{{stream_id}}/reap", reap_stream)
    app.router.add_post(f"{PREFIX}/streams/{{stream_id}}/frames", record_frames)
    app.router.add_put(f"{PREFIX}/limits", put_limit)
    app.router.add_post(f"{PREFIX}/faults", add_fault)
    app.router.add_get(f"{PREFIX}/faults", list_faults)
    app.router.add_delete(f"{PREFIX}/faults", clear_faults)
    app.router.add_get(f"{PREFIX}/calls", get_calls)
    app.router.add_delete(f"{PREFIX}/calls", reset_calls)
    app.router.add_get(f"{PREFIX}/region", get_region)
    app.router.add_put(f"{PREFIX}/region", put_region)
    app.router.add_get(f"{PREFIX}/pulls", list_pulls)
    app.router.add_post(f"{PREFIX}/expire", expire_now)
    app.router.add_post(f"{PREFIX}/reset", reset)
