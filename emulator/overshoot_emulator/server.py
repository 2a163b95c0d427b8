"""Assembles the aiohttp application and runs it: routes, JSON errors, the expirer task,
the camera pulls (and, with LiveKit, the media gateway and the republisher), the listening
socket and the one stdout line (`Listening on http://HOST:PORT`) that process wrappers wait
for. On stop, pulls end first (their reader threads notice within about a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from overshoot_emulator import admin, api
from overshoot_emulator.config import EmulatorConfig
from overshoot_emulator.expirer import run_expirer
from overshoot_emulator.pull import PullManager, PullSettings, Republisher
from overshoot_emulator.regions import Regions
from overshoot_emulator.state import EMULATOR, Abort, Emulator, detail
from overshoot_emulator.store import Stream, StreamStore
from overshoot_emulator.tokens import LiveKitTokenMinter, OpaqueTokenMinter, TokenMinter

log = logging.getLogger(__name__)


def build_emulator(config: EmulatorConfig) -> Emulator:
    store = StreamStore(ttl_seconds=config.ttl_seconds, tombstone_seconds=config.tombstone_seconds)
    minter: TokenMinter
    republisher = None
    if config.livekit is not None:
        minter = LiveKitTokenMinter(config.publish_url, config.livekit)
        credentials = config.livekit

        def republisher(stream: Stream) -> Republisher:
            from overshoot_emulator.republish import LiveKitRepublisher

            return LiveKitRepublisher(config.publish_url, credentials, stream)
    else:
        minter = OpaqueTokenMinter(config.publish_url)
    pulls = PullManager(
        store,
        PullSettings(
            connect_timeout=config.source_connect_timeout,
            allow_private=config.allow_private_sources,
        ),
        republisher,
    )
    store.subscribe(pulls)
    return Emulator(
        config=config, store=store, minter=minter, pulls=pulls, regions=Regions(config.regions)
    )


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Abort as abort:
        return abort.response
    except web.HTTPException as exc:
        # Unknown paths and wrong methods answer in the contract's error shape too.
        if exc.status < 400:
            raise
        return detail(
            exc.status, exc.reason, {k: v for k, v in exc.headers.items() if k == "Allow"}
        )


def create_app(emulator: Emulator) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    app[EMULATOR] = emulator
    api.add_routes(app)
    admin.add_routes(app)

    async def expirer(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(
            run_expirer(emulator.store, emulator.config.expire_interval), name="expirer"
        )
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(expirer)
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (read it back with getsockname)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    config: EmulatorConfig,
    stop: asyncio.Event,
    *,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve until `stop` is set; `announce` receives the base URL once listening."""
    emulator = build_emulator(config)
    app = create_app(emulator)
    gateway = None
    if config.livekit is not None:
        from overshoot_emulator import gateway as media_gateway

        gateway = media_gateway.MediaGateway(emulator.store, config.publish_url, config.livekit)
        emulator.store.subscribe(gateway)
        media_gateway.add_routes(app, gateway, admin.PREFIX)
    runner = web.AppRunner(
        app,
        # Per-request access logs would dominate the cost of a keepalive under load.
        access_log=logging.getLogger("aiohttp.access") if config.access_log else None,
        handle_signals=False,
    )
    await runner.setup()
    try:
        sock = bind(config.host, config.port)
        site = web.SockSite(runner, sock)
        await site.start()
        url = base_url(config.host, sock.getsockname()[1])
        log.info(
            "Started emulator at %s (ttl %gs, tombstone %gs, %s, %s tokens, regions %s%s)",
            url,
            config.ttl_seconds,
            config.tombstone_seconds,
            "any key accepted"
            if config.accept_any_key
            else f"{len(config.accepted_key_digests)} key(s) accepted",
            "LiveKit" if config.livekit else "opaque",
            ",".join(config.regions),
            ", private sources allowed" if config.allow_private_sources else "",
        )
        if announce is not None:
            announce(url)
        await stop.wait()
    finally:
        # Pulls first: a create still waiting for its source answers 503 at once, instead
        # of holding the server's shutdown for the rest of its connect window.
        await emulator.pulls.aclose()
        if gateway is not None:
            await gateway.aclose()
        await runner.cleanup()
        log.info("Stopped emulator")
