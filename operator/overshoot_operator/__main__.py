"""`overshoot-operator`: run the operator with settings from the environment.

Order of a run: health endpoints and metrics first (every replica answers probes); then,
with leader election on, wait to hold the Lease (a standby stops here); wait for the CRD
to be served; start the controller and kopf's watches. The run ends on SIGTERM/SIGINT
(stop acting, then release the Lease so a standby takes over at once, exit 0), or when the
Lease is lost (stop acting at once, exit 1: the Pod restarts as a standby with nothing in
memory), or if kopf fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

import kopf
from prometheus_client import start_http_server

from overshoot_operator import handlers, health, metrics
from overshoot_operator import overshoot as ov
from overshoot_operator import resource as res
from overshoot_operator.kube import Kube, KubeError, load_api_client
from overshoot_operator.leader import AlwaysLeading, Leadership, Role, Timing
from overshoot_operator.limiter import CallLimiter
from overshoot_operator.reconciler import Controller, request_gate
from overshoot_operator.settings import OperatorSettings

logger = logging.getLogger("overshoot_operator")

# How long a stop waits for kopf's watches and the controller to finish.
STOP_TIMEOUT_SECONDS = 10.0
CRD_POLL_SECONDS = 2.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="overshoot-operator", description=__doc__)
    parser.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster or ~/.kube)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)

    settings = OperatorSettings()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request line at INFO; keep it for --verbose only.
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if args.kubeconfig:
        # kopf's own login (its watches) reads the standard variable; our client is told
        # explicitly. Both must use the same identity.
        os.environ["KUBECONFIG"] = args.kubeconfig
    start_http_server(settings.metrics_port, addr=settings.listen_host, registry=metrics.REGISTRY)
    return asyncio.run(run(settings, kubeconfig=args.kubeconfig))


def _identity(settings: OperatorSettings) -> str:
    return settings.leader_election_identity or f"{socket.gethostname()}-{os.getpid()}"


async def run(settings: OperatorSettings, *, kubeconfig: str | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    kube = Kube(load_api_client(kubeconfig), request_timeout=settings.kube_request_timeout_seconds)
    leader: Leadership | AlwaysLeading
    if settings.leader_election:
        leader = Leadership(
            kube,
            namespace=settings.leader_election_namespace,
            name=settings.leader_election_name,
            identity=_identity(settings),
            timing=Timing(
                lease_duration=settings.leader_lease_duration_seconds,
                renew_deadline=settings.leader_renew_deadline_seconds,
                retry_period=settings.leader_retry_period_seconds,
            ),
        )
    else:
        leader = AlwaysLeading()
    kube.set_write_gate(leader.check_act)
    limiter = CallLimiter(settings.api_max_concurrency, settings.api_max_per_second)
    client = ov.OvershootClient(
        settings.api_url,
        max_connections=settings.api_max_concurrency,
        gate=request_gate(leader, limiter),
        observe=lambda endpoint, outcome: metrics.API_CALLS.labels(endpoint.value, outcome).inc(),
    )
    controller = Controller(settings, client, kube, leader)
    runner = await health.serve(
        settings.listen_host, settings.health_port, ready=lambda: not stop.is_set()
    )
    try:
        return await _serve(settings, kubeconfig, kube, leader, controller, stop)
    finally:
        await runner.cleanup()
        await client.aclose()
        kube.close()


async def _serve(
    settings: OperatorSettings,
    kubeconfig: str | None,
    kube: Kube,
    leader: Leadership | AlwaysLeading,
    controller: Controller,
    stop: asyncio.Event,
) -> int:
    if isinstance(leader, Leadership):
        if not await leader.acquire(stop):
            return 0
        leader.on_change = controller.on_leadership
    metrics.LEADER.set(1)
    if not await _wait_for_crd(kube, stop):
        await _release(leader)
        return 0

    controller.start()
    handlers.install(controller, kubeconfig=kubeconfig)
    kopf_stop, kopf_ready = asyncio.Event(), asyncio.Event()
    operator = asyncio.create_task(
        kopf.operator(
            settings=handlers.kopf_settings(settings),
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            standalone=True,
            stop_flag=kopf_stop,
            ready_flag=kopf_ready,
        ),
        name="kopf",
    )
    signals = asyncio.create_task(_take_back_signals(kopf_ready, stop), name="signals")
    waiters = {operator, asyncio.create_task(stop.wait(), name="stop")}
    if isinstance(leader, Leadership):
        waiters.add(asyncio.create_task(leader.hold(stop), name="leader"))
    logger.info("Started overshoot-operator against %s", settings.api_url)
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    lost = leader.role is Role.LOST
    if lost:
        logger.error("Stopping: this replica no longer holds %s", leader.what)
    # Stop acting before anything else (the leader gate already refuses a lost replica),
    # then hand the Lease over at once: kopf's watches act on nothing, and their shutdown
    # can take seconds.
    await controller.stop()
    metrics.LEADER.set(0)
    if not lost:
        await _release(leader)
    kopf_stop.set()
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(operator, STOP_TIMEOUT_SECONDS)
    for task in (*waiters, signals):
        task.cancel()
    failed = operator.done() and not operator.cancelled() and operator.exception() is not None
    return 1 if lost or failed else 0


async def _take_back_signals(kopf_ready: asyncio.Event, stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT go to `stop`, not to kopf, which installs its own as it starts:
    a stop must first stop the controller and release the leader Lease, then stop kopf
    (whose shutdown waits seconds for tasks it did not start)."""
    await kopf_ready.wait()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def _release(leader: Leadership | AlwaysLeading) -> None:
    if isinstance(leader, Leadership):
        await leader.release()


async def _wait_for_crd(kube: Kube, stop: asyncio.Event) -> bool:
    """kopf serves only resources that exist when it starts (scanning is off)."""
    logged = False
    while not stop.is_set():
        try:
            if await kube.api_group_served(res.GROUP, res.VERSION, res.PLURAL):
                return True
            why = "not served yet"
        except KubeError as err:
            why = str(err)
        if not logged:
            logger.info("Waiting for the CRD %s to be served (%s)", res.CRD_NAME, why)
            logged = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CRD_POLL_SECONDS):
                await stop.wait()
    return False


if __name__ == "__main__":
    raise SystemExit(main())
