"""Health and metrics over HTTP on one port: /healthz, /readyz and /metrics.

- /healthz: the process and its event loop answer (liveness).
- /readyz: the source is open and the video track is published (readiness); the body
  says which of the two is missing. In standby (the operator released the stream because
  no frame ever reached Overshoot), ready means the source delivers frames: the
  operator's signal to create a stream again.
- /metrics: Prometheus text from `Metrics`.

Boundary: aiohttp's server. Serves only what `Metrics` holds; never a token or URL.
"""

from __future__ import annotations

import json

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from overshoot_publisher.metrics import Metrics


def build_app(metrics: Metrics) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        state = metrics.state
        body = {
            "ready": state.ready,
            "sourceOpen": state.source_open,
            "trackPublished": state.track_published,
            "mode": state.mode,
            "streamId": state.stream_id,
            "standby": state.standby,
        }
        return web.Response(
            text=json.dumps(body) + "\n",
            status=200 if state.ready else 503,
            content_type="application/json",
        )

    async def metrics_handler(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app


class HealthServer:
    def __init__(self, metrics: Metrics, port: int, host: str = "0.0.0.0") -> None:
        self._app = build_app(metrics)
        self._runner = web.AppRunner(self._app, access_log=None)
        self._host = host
        self._port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()

    async def stop(self) -> None:
        await self._runner.cleanup()
