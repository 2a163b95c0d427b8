"""The operator's health endpoints: `/healthz` (liveness) and `/readyz` (readiness).

Role: what the kubelet probes, on every replica, leader or standby (a standby that does not
answer would be restarted for doing its job). Liveness says the event loop runs: the
answer comes from the loop itself. Readiness says the replica is either serving (leader,
watches started) or standing by, and not stopping.

Boundary: an aiohttp server on `settings.listen_host:health_port`.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


async def serve(host: str, port: int, *, ready: Callable[[], bool]) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not ready\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
