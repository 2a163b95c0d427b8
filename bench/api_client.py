"""Overshoot client transports: keepalive requests/s and client CPU per request.

Measures what the operator's one recurring call (POST /v1/streams/{id}/keepalive with a
Bearer key and a `{}` body, answer parsed into `KeepaliveResult`) costs this process, for
each transport, at 1, 32 and 256 concurrent requests:

- `httpx`: `OvershootClient(transport=httpx.AsyncHTTPTransport(...))`, httpx's own (httpcore);
- `httpx+aiohttp`: `OvershootClient` on its default, `default_transport()`: our adapter of
  httpx's transport interface over one aiohttp session;
- `httpx-aiohttp`: the same idea from the httpx-aiohttp package, for reference (not used:
  it reports a dropped connection as a connect timeout, which would repeat a create);
- `aiohttp`: an aiohttp session directly, with the same request and the same model parse.

The emulator runs as a subprocess pinned to CPU 0 (`taskset`) and this client process to
CPU 1, so "CPU ms/request" is `time.process_time()` of the client alone. Every transport
gets the same connection cap (the client's default pool of 100), so 256 concurrent
requests also measure queueing for a connection. Loopback only.

    .venv/bin/python bench/api_client.py [--requests 3000] [--max-seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr

from overshoot_localstack.emulator import EmulatorProcess
from overshoot_operator.overshoot import KeepaliveResult, OvershootClient, default_transport

KEY = "ovs-bench-api-client"
CONCURRENCY = (1, 32, 256)
TRANSPORTS = ("httpx", "httpx+aiohttp", "httpx-aiohttp", "aiohttp")
# The client's default pool size; every transport gets the same cap.
MAX_CONNECTIONS = 100
STREAMS = 256

Call = Callable[[str], Awaitable[object]]


@dataclass(frozen=True)
class Cell:
    transport: str
    concurrency: int
    requests: int
    errors: int
    elapsed: float
    cpu: float
    latencies: Sequence[float]

    @property
    def per_second(self) -> float:
        return self.requests / self.elapsed

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu / self.requests * 1000

    def percentile_ms(self, fraction: float) -> float:
        values = sorted(self.latencies)
        index = min(len(values) - 1, round(fraction * (len(values) - 1)))
        return values[index] * 1000


async def fan_out(
    call: Call, ids: Sequence[str], concurrency: int, total: int, max_seconds: float
) -> tuple[list[float], int, int, float]:
    """Up to `total` calls, `concurrency` at a time, stopping after `max_seconds`.

    Latencies (s), calls made, errors, elapsed (s)."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker() -> None:
        nonlocal issued, errors
        while issued < total and time.perf_counter() < deadline:
            stream_id = ids[issued % len(ids)]
            issued += 1
            t0 = time.perf_counter()
            try:
                await call(stream_id)
            except Exception:
                errors += 1
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, len(latencies), errors, time.perf_counter() - started


def client_call(client: OvershootClient) -> Call:
    key = SecretStr(KEY)

    async def call(stream_id: str) -> object:
        return await client.keepalive(key, stream_id)

    return call


def aiohttp_call(session: aiohttp.ClientSession, base: str) -> Call:
    headers = {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }

    async def call(stream_id: str) -> object:
        async with session.post(
            f"{base}/streams/{stream_id}/keepalive", data=b"{}", headers=headers
        ) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"keepalive answered {response.status}")
            return KeepaliveResult.model_validate_json(body)

    return call


async def measure(
    transport: str, base: str, ids: Sequence[str], concurrency: int, total: int, seconds: float
) -> Cell:
    session: aiohttp.ClientSession | None = None
    client: OvershootClient | None = None
    limits = httpx.Limits(
        max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
    )
    if transport == "httpx":
        client = OvershootClient(base, transport=httpx.AsyncHTTPTransport(limits=limits))
        call = client_call(client)
    elif transport == "httpx+aiohttp":
        client = OvershootClient(base, transport=default_transport(MAX_CONNECTIONS))
        call = client_call(client)
    elif transport == "httpx-aiohttp":
        client = OvershootClient(base, transport=AiohttpTransport(limits=limits))
        call = client_call(client)
    else:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS))
        call = aiohttp_call(session, base)
    try:
        # Warm-up: open the connections and fill caches outside the figures.
        await fan_out(call, ids, concurrency, max(200, 2 * concurrency), seconds)
        gc.collect()
        cpu0 = time.process_time()
        latencies, made, errors, elapsed = await fan_out(call, ids, concurrency, total, seconds)
        cpu = time.process_time() - cpu0
    finally:
        if client is not None:
            await client.aclose()
        if session is not None:
            await session.close()
    return Cell(transport, concurrency, made, errors, elapsed, cpu, latencies)


async def create_streams(base: str, count: int) -> list[str]:
    key = SecretStr(KEY)
    async with OvershootClient(base) as client:
        created = await asyncio.gather(*(client.create_stream(key) for _ in range(count)))
    return [stream.id for stream in created]


async def run(base: str, total: int, seconds: float) -> list[Cell]:
    ids = await create_streams(base, STREAMS)
    cells = []
    for transport in TRANSPORTS:
        for concurrency in CONCURRENCY:
            cells.append(await measure(transport, base, ids, concurrency, total, seconds))
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per cell")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="per cell")
    args = parser.parse_args()

    prefix: list[str] = []
    cpus = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") and len(cpus) > 1:
        prefix = ["taskset", "-c", str(cpus[0])]
        os.sched_setaffinity(0, {cpus[1]})
    with EmulatorProcess(command_prefix=prefix, api_keys=[KEY]) as emulator:
        cells = asyncio.run(run(emulator.api_url, args.requests, args.max_seconds))

    pinning = (
        f"emulator on CPU {cpus[0]}, client on CPU {cpus[1]}" if prefix else "not pinned (1 CPU)"
    )
    print(
        f"api_client: keepalive over loopback; {pinning}; "
        f"pool cap {MAX_CONNECTIONS}; up to {args.requests} requests or {args.max_seconds:g} s per cell"
    )
    header = (
        f"{'transport':<14} {'concurrency':>11} {'req/s':>8} {'CPU ms/req':>10} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for cell in cells:
        print(
            f"{cell.transport:<14} {cell.concurrency:>11} {cell.per_second:>8.0f} "
            f"{cell.cpu_ms_per_request:>10.3f} {cell.percentile_ms(0.50):>8.2f} "
            f"{cell.percentile_ms(0.99):>8.2f} {cell.errors:>6}"
        )
    return 0 if all(cell.errors == 0 for cell in cells) else 1


if __name__ == "__main__":
    raise SystemExit(main())
