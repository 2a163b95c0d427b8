"""`overshoot-publisher`: the console script. Parses the env contract, wires signals, runs.

Environment: `OVERSHOOT_PUBLISHER_CONFIG` (the JSON the operator renders, see config.py);
optional `OVERSHOOT_TERMINATION_LOG` (default /dev/termination-log) and
`OVERSHOOT_PUBLISHER_HEALTH_HOST` (default 0.0.0.0; tests use 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from overshoot_publisher.app import EXIT_CONFIGURATION, run, write_termination_message
from overshoot_publisher.config import PublisherConfig, PublisherConfigError


async def _main(config: PublisherConfig, health_host: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run(config, stop, health_host=health_host)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The SDK's native logs are chatty at INFO and say nothing a user acts on.
    logging.getLogger("livekit").setLevel(logging.WARNING)
    try:
        config = PublisherConfig.from_env(os.environ)
    except PublisherConfigError as exc:
        logging.getLogger("overshoot_publisher").error("%s", exc)
        write_termination_message(str(exc))
        return EXIT_CONFIGURATION
    health_host = os.environ.get("OVERSHOOT_PUBLISHER_HEALTH_HOST", "0.0.0.0")
    return asyncio.run(_main(config, health_host))


if __name__ == "__main__":
    raise SystemExit(main())
