"""The work queue: keys to process, each by at most one task at a time.

Role: the controller's spine (client-go's workqueue). Everything that can change what a
resource needs (a watch event, a Pod event, a due keepalive, a retry, a poll result) only
adds the resource's key here; `process(key)` then starts from a fresh read and does what
is needed now. A key added while it is being processed is processed once more afterwards
(never twice at once, never lost); keys added many times while waiting are processed once.
`add_after` is the only timer: the key comes back at that time (a later call replaces it).

There is no cap on how many keys are processed at once: a create waiting minutes for an
Overshoot call slot must not hold a worker that a keepalive of another resource needs.
What bounds the work in flight is where the work goes: the Overshoot call limiter and the
Kubernetes client's threads.

Boundary: asyncio only; what processing means is the caller's callback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from overshoot_operator.schedule import DueQueue

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, process: Callable[[K], Awaitable[None]], *, name: str) -> None:
        self._process = process
        self._name = name
        self._running: dict[K, asyncio.Task[None]] = {}
        self._dirty: set[K] = set()
        self._later: DueQueue[K] = DueQueue(self.add, name=f"{name}-later")
        self._stopped = False

    def __len__(self) -> int:
        """Keys being processed now."""
        return len(self._running)

    @property
    def scheduled(self) -> int:
        return len(self._later)

    def start(self) -> None:
        self._stopped = False
        self._later.start()

    async def stop(self) -> None:
        self._stopped = True
        await self._later.stop()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()
        self._dirty.clear()

    def add(self, key: K) -> None:
        if self._stopped:
            return
        if key in self._running:
            self._dirty.add(key)
            return
        self._running[key] = asyncio.create_task(self._run(key), name=f"{self._name}:{key}")

    def add_after(self, key: K, delay: float) -> None:
        """Process `key` again after `delay` seconds (replacing an earlier `add_after`)."""
        if delay <= 0:
            self.add(key)
        else:
            self._later.schedule(key, delay)

    def due_at(self, key: K) -> float | None:
        return self._later.due_at(key)

    def forget(self, key: K) -> None:
        """No timer for `key` any more (its task, if running, finishes normally)."""
        self._later.cancel(key)
        self._dirty.discard(key)

    async def _run(self, key: K) -> None:
        try:
            while True:
                self._dirty.discard(key)
                try:
                    await self._process(key)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # `process` owns its errors; this keeps one bug from stopping the key
                    # for good: it is tried again, not too soon.
                    logger.exception("Unhandled error in %s for %s", self._name, key)
                    self._later.schedule(key, 5.0)
                if key not in self._dirty:
                    return
        finally:
            self._running.pop(key, None)
