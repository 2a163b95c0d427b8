"""Emulator throughput: hold 10,000 live streams and measure keepalives per second.

Starts the emulator as a subprocess (pinned to CPU 0 with `taskset` when available), pins
this client process to another CPU when there is one, creates the streams, then fires a
fixed number of keepalives over many concurrent loopback connections with aiohttp's client
(cheaper per request than httpx, so the client is less of the bottleneck). Prints streams
held, keepalive requests/s, p50/p99 latency and the emulator's resident memory.

    .venv/bin/python bench/emulator_throughput.py [--streams 10000] [--requests 40000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import time
from collections.abc import Sequence

import aiohttp

from overshoot_localstack.emulator import EmulatorProcess

KEY = "ovs-bench-key"
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


async def fan_out(
    session: aiohttp.ClientSession,
    concurrency: int,
    total: int,
    request: str,
    url_for: Sequence[str],
) -> tuple[list[float], float, int]:
    """Send `total` requests, `concurrency` at a time; latencies (s), elapsed (s), errors."""
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < total:
            i = next_index
            next_index += 1
            started = time.perf_counter()
            async with session.request(
                request, url_for[i % len(url_for)], data=b"{}", headers=HEADERS
            ) as response:
                await response.read()
                if response.status >= 300:
                    errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, errors


async def run(base: str, streams: int, requests: int, concurrency: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        create_latencies, create_elapsed, create_errors = await fan_out(
            session, concurrency, streams, "POST", [f"{base}/v1/streams"]
        )
        if create_errors:
            raise SystemExit(f"{create_errors} creates failed")
        async with session.get(f"{base}/_emulator/streams?state=active") as response:
            listed = (await response.json())["streams"]
        ids = [stream["id"] for stream in listed]
        urls = [f"{base}/v1/streams/{stream_id}/keepalive" for stream_id in ids]
        # A short warm-up so connection setup is not in the figures.
        await fan_out(session, concurrency, min(2_000, requests), "POST", urls)
        latencies, elapsed, errors = await fan_out(session, concurrency, requests, "POST", urls)
        async with session.get(f"{base}/_emulator/healthz") as response:
            held = (await response.json())["streams"]
    latencies.sort()
    return {
        "streams_created": len(ids),
        "create_per_s": streams / create_elapsed,
        "create_p50_ms": statistics.median(create_latencies) * 1000,
        "streams_held": held,
        "keepalives": len(latencies),
        "keepalive_errors": errors,
        "keepalive_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    prefix: list[str] = []
    cpus = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") and cpus:
        prefix = ["taskset", "-c", str(cpus[0])]
        if len(cpus) > 1:
            os.sched_setaffinity(0, set(cpus[1:]))
    with EmulatorProcess(command_prefix=prefix, api_keys=[KEY]) as emulator:
        rss_before = rss_mib(emulator.pid)
        figures = asyncio.run(run(emulator.url, args.streams, args.requests, args.concurrency))
        rss_after = rss_mib(emulator.pid)

    pinned = f"emulator pinned to CPU {prefix[-1]}" if prefix else "emulator not pinned"
    print(f"emulator_throughput ({pinned}; {args.concurrency} connections; loopback)")
    print(f"  streams held:         {figures['streams_held']:.0f}")
    print(
        f"  creates:              {figures['streams_created']:.0f} "
        f"at {figures['create_per_s']:.0f}/s (p50 {figures['create_p50_ms']:.2f} ms)"
    )
    print(
        f"  keepalives:           {figures['keepalives']:.0f} "
        f"({figures['keepalive_errors']:.0f} errors)"
    )
    print(f"  keepalive requests/s: {figures['keepalive_per_s']:.0f}")
    print(f"  keepalive p50:        {figures['p50_ms']:.2f} ms")
    print(f"  keepalive p99:        {figures['p99_ms']:.2f} ms")
    print(f"  emulator RSS:         {rss_before:.1f} MiB idle, {rss_after:.1f} MiB loaded")
    return 0 if figures["keepalive_errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
