"""Coalesced background writes: "this key's object is out of date, write it soon".

Role: keepalives and status polls change what the Secret and the status should say, but a
lease must never wait for a Kubernetes write (at thousands of streams the API server
answers in hundreds of ms and its queue is where leases were lost: bench/operator_scale.py).
So they only mark the key; a few worker tasks write marked keys in order, reading the state
at write time. A key marked again while queued is written once; marked while its write
runs, it is written once more afterwards. Under load, writes merge instead of piling up.

Boundary: asyncio only; what a write does is the caller's callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class WriteBack(Generic[K]):
    """`mark(key)` asks for `write(key)` to run soon; `workers` tasks serve marks in order."""

    def __init__(self, write: Callable[[K], Awaitable[None]], *, workers: int, name: str) -> None:
        self._write = write
        self._workers = workers
        self._name = name
        # Insertion-ordered: the oldest mark is written first.
        self._queued: dict[K, None] = {}
        self._running: set[K] = set()
        self._again: set[K] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        """Keys waiting for a write (not those being written)."""
        return len(self._queued)

    def mark(self, key: K) -> None:
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued[key] = None
            self._wake.set()

    def discard(self, key: K) -> None:
        self._queued.pop(key, None)
        self._again.discard(key)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._work(), name=f"{self._name}-{i}")
                for i in range(self._workers)
            ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _work(self) -> None:
        while True:
            while not self._queued:
                self._wake.clear()
                await self._wake.wait()
            key = next(iter(self._queued))
            del self._queued[key]
            self._running.add(key)
            try:
                await self._write(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The callback owns its errors; this line keeps one bug from stopping
                # every other key's writes.
                logger.exception("Unhandled error in %s for %s", self._name, key)
            finally:
                self._running.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.mark(key)
