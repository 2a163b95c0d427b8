"""Kubernetes client cost: client CPU per request, `kubernetes` in threads vs aiohttp.

The operator's steady state is two Kubernetes writes per keepalive (the Secret's token
and the status). This measures what one such write costs the operator process with:

- `kubernetes+threads`: the official `kubernetes` client (urllib3, synchronous), called
  from a pool of 32 worker threads, `_preload_content=False` and `json.loads`, exactly as
  kube.py did before it moved to aiohttp;
- `aiohttp`: one aiohttp session on the event loop, the same requests and the same parse.

Each variant PATCHes `--requests` Secrets (strategic merge of one data key, as a token
rotation does) with 32 in flight, against a real kube-apiserver started here. The control
plane is pinned to CPU 0 and this process to CPU 1, so "CPU ms/request" is
`time.process_time()` of the client alone (every thread included). Loopback only.

    .venv/bin/python bench/kube_client.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import kubernetes

from overshoot_localstack import binaries
from overshoot_localstack import cluster as localcluster

NAMESPACE = "default"
SECRETS = 64
CONCURRENCY = 32


def patch_body(i: int) -> dict[str, object]:
    token = base64.b64encode(f"token-{i}-{time.monotonic_ns()}".encode()).decode()
    return {"data": {"token": token}}


async def run(n: int, call: Callable[[int], Awaitable[None]]) -> tuple[float, float, float]:
    """(seconds, client CPU seconds, requests/s) for n calls with CONCURRENCY in flight."""
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            await call(i)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return elapsed, cpu, n / elapsed


async def measure(plane: localcluster.ControlPlane, n: int) -> None:
    assert plane.pki is not None
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(plane.kubeconfig), client_configuration=config
    )
    config.connection_pool_maxsize = CONCURRENCY
    api = kubernetes.client.ApiClient(config)
    core = kubernetes.client.CoreV1Api(api)
    for i in range(SECRETS):
        body = {"metadata": {"name": f"bench-{i}"}, "data": {"token": "eA=="}}
        try:
            core.create_namespaced_secret(NAMESPACE, body)
        except kubernetes.client.ApiException as err:
            if err.status != 409:
                raise

    threads = ThreadPoolExecutor(CONCURRENCY)
    loop = asyncio.get_running_loop()

    async def threaded(i: int) -> None:
        def call() -> object:
            response = core.patch_namespaced_secret(
                f"bench-{i % SECRETS}", NAMESPACE, patch_body(i), _preload_content=False
            )
            return json.loads(response.data)

        await loop.run_in_executor(threads, call)

    context = ssl.create_default_context(cafile=str(plane.ca_file))
    context.load_cert_chain(str(plane.pki.admin_cert), str(plane.pki.admin_key))
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=CONCURRENCY),
        timeout=aiohttp.ClientTimeout(total=30),
    )

    async def direct(i: int) -> None:
        url = f"{plane.server}/api/v1/namespaces/{NAMESPACE}/secrets/bench-{i % SECRETS}"
        async with session.patch(
            url,
            data=json.dumps(patch_body(i)),
            headers={"Content-Type": "application/strategic-merge-patch+json"},
        ) as response:
            response.raise_for_status()
            json.loads(await response.read())

    rows = []
    for name, call in (("kubernetes+threads", threaded), ("aiohttp", direct)):
        await run(min(n, 300), call)  # warm connections and code paths
        _, cpu, rate = await run(n, call)
        rows.append((name, rate, cpu * 1000 / n))
    await session.close()
    threads.shutdown()
    api.close()  # type: ignore[no-untyped-call]

    print(f"\nKubernetes client, Secret PATCH, {CONCURRENCY} in flight, {n} requests each")
    print(f"{'client':<20} {'requests/s':>11} {'CPU ms/request':>15}")
    for name, rate, cpu_ms in rows:
        print(f"{name:<20} {rate:>11.0f} {cpu_ms:>15.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    plane = localcluster.ControlPlane(binary_paths=binaries.ensure(list(localcluster.BINARIES)))
    plane.start()
    try:
        if (os.cpu_count() or 1) >= 2:
            for pid in plane.pids().values():
                os.sched_setaffinity(pid, {0})
            os.sched_setaffinity(0, {1})
        asyncio.run(measure(plane, args.requests))
    finally:
        plane.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
