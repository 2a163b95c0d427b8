"""The background expirer: ends streams whose lease ran out and purges old tombstones.

A loop around `StreamStore.expire_due`, which pops only due entries from its heaps, so
a sweep over 10,000 idle streams costs nothing. Reads settle their own stream against the
clock, so the sweep interval changes only when observers hear of an expiry, never what
the API answers.
"""

from __future__ import annotations

import asyncio
import logging

from overshoot_emulator.store import StreamStore

log = logging.getLogger(__name__)


async def run_expirer(store: StreamStore, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            ended = store.expire_due()
        except Exception:
            # A bug here must not silently stop all expiry for the rest of the run.
            log.exception("Expirer sweep failed")
            continue
        if ended:
            log.info("Expired %d stream(s) whose lease ran out", ended)
