"""`overshoot-operator`: run the operator (kopf) with settings from the environment.

Equivalent to `kopf run -m overshoot_operator.handlers`, plus: typed settings built once,
a liveness endpoint (kopf's probes) and Prometheus metrics on their own port.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

import kopf
from prometheus_client import start_http_server

from overshoot_operator import handlers, metrics
from overshoot_operator.settings import OperatorSettings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="overshoot-operator", description=__doc__)
    parser.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster or ~/.kube)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--standalone",
        action="store_true",
        default=True,
        help="no peering (default); see the Helm chart for two replicas with peering",
    )
    parser.add_argument("--peering", help="kopf peering name for active/standby replicas")
    parser.add_argument("--priority", type=int, default=0, help="kopf peering priority")
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
        # explicitly in `configure`. Both must use the same identity.
        os.environ["KUBECONFIG"] = args.kubeconfig
    handlers.configure(settings, kubeconfig=args.kubeconfig)
    start_http_server(settings.metrics_port, addr=settings.listen_host, registry=metrics.REGISTRY)
    asyncio.run(
        kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            standalone=args.peering is None,
            peering_name=args.peering,
            priority=args.priority,
            liveness_endpoint=f"http://{settings.listen_host}:{settings.health_port}/healthz",
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
