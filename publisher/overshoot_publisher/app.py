"""`run()`: the publisher's one owner of every resource, from start to a clean exit.

Starts the health server, the LiveKit session and the media loop; returns an exit code
when `stop` is set (0) or when the source fails for a reason the user must fix (non-zero,
after writing the termination message Kubernetes shows in the Pod's status). Everything
is released in `finally`: the media loop closes its source, the session leaves the room.

Boundary: orchestration only; the work is in media.py, session.py, sources.py, health.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from overshoot_publisher.config import PublisherConfig
from overshoot_publisher.errors import ConfigurationError, SourceRejected
from overshoot_publisher.health import HealthServer
from overshoot_publisher.media import MediaLoop
from overshoot_publisher.metrics import Metrics
from overshoot_publisher.mounted import read_credentials
from overshoot_publisher.session import Session

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_SOURCE_REJECTED = 3
EXIT_CONFIGURATION = 4

DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def write_termination_message(message: str, path: str | None = None) -> None:
    """Best effort: Kubernetes copies this file into the container's termination state."""
    target = path or os.environ.get("OVERSHOOT_TERMINATION_LOG") or DEFAULT_TERMINATION_LOG
    try:
        Path(target).write_text(message + "\n", encoding="utf-8")
    except OSError as exc:
        logger.debug("Could not write the termination message to %s: %s", target, exc)


async def run(
    config: PublisherConfig,
    stop: asyncio.Event,
    *,
    metrics: Metrics | None = None,
    health_host: str = "0.0.0.0",
) -> int:
    metrics = metrics or Metrics()
    health = HealthServer(metrics, config.health_port, health_host)
    session = Session(config.secret_dir, metrics)
    media_task: asyncio.Task[None] | None = None
    await health.start()
    try:
        try:
            credentials = await asyncio.to_thread(read_credentials, config.credentials_dir)
        except ConfigurationError as exc:
            message = f"OvershootStream {config.namespace}/{config.name}: {exc}"
            logger.error("%s", message)
            write_termination_message(message)
            return EXIT_CONFIGURATION
        session.start()
        media = MediaLoop(config, credentials, session, metrics)
        media_task = asyncio.create_task(media.run(), name="media")
        stop_task = asyncio.create_task(stop.wait(), name="stop")
        try:
            await asyncio.wait({media_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_task.cancel()
        if media_task.done():
            try:
                media_task.result()
            except SourceRejected as exc:
                message = f"OvershootStream {config.namespace}/{config.name}: {exc} ({exc.reason})"
                logger.error("%s", message)
                write_termination_message(message)
                return EXIT_SOURCE_REJECTED
        logger.info("Stopping")
        return EXIT_OK
    finally:
        if media_task is not None and not media_task.done():
            media_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await media_task
        await session.aclose()
        await health.stop()
