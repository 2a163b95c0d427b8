"""A process-wide limit on Overshoot calls: concurrency and rate, served by priority.

Role: every call the operator makes to Overshoot first takes a slot here, so a burst of a
thousand new resources cannot starve the keepalives that keep existing streams alive
(invariant 4) and cannot trip Overshoot's own rate limits.

Boundary: asyncio only; time comes from the running loop's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator
from enum import IntEnum


class Priority(IntEnum):
    """Lower goes first. Keepalives and deletes protect leases; creates can wait, and
    the periodic status poll waits for everything else.

    The poll is last because it is the one call whose delay nobody loses anything to but
    freshness: above creates, thousands of polls (one per stream a minute) could take every
    slot of a saturated limiter, and a new resource would wait for its stream forever.
    """

    KEEPALIVE = 0
    DELETE = 1
    GET = 2  # a one-off read inside a lifecycle step (why did the stream end?)
    CREATE = 3
    POLL = 4


class CallLimiter:
    """At most `concurrency` calls in flight and `per_second` starts per second.

    Waiters are served strictly by (priority, arrival). The rate is a token bucket with a
    burst of one second's worth, refilled continuously.
    """

    def __init__(self, concurrency: int, per_second: float) -> None:
        self._concurrency = concurrency
        self._per_second = per_second
        self._burst = max(1.0, per_second)
        self._tokens = self._burst
        self._refilled_at: float | None = None
        self._in_flight = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._wakeup: asyncio.TimerHandle | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    @contextlib.asynccontextmanager
    async def slot(self, priority: Priority) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, priority: Priority) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (int(priority), next(self._seq), future))
        self._dispatch()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted in the same tick we were cancelled: hand the slot back.
                self.release()
            raise

    def release(self) -> None:
        self._in_flight -= 1
        self._dispatch()

    def _refill(self, now: float) -> None:
        if self._refilled_at is not None:
            self._tokens = min(
                self._burst, self._tokens + (now - self._refilled_at) * self._per_second
            )
        self._refilled_at = now

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        self._refill(loop.time())
        while self._waiters:
            _, _, future = self._waiters[0]
            if future.done():  # cancelled while waiting
                heapq.heappop(self._waiters)
                continue
            if self._in_flight >= self._concurrency:
                return  # release() dispatches again
            # The epsilon absorbs float error: a refill that should reach exactly one token
            # must not leave 0.9999999 and re-arm a near-zero timer forever.
            if self._tokens < 1.0 - 1e-9:
                if self._wakeup is None:
                    delay = max(1e-3, (1.0 - self._tokens) / self._per_second)
                    self._wakeup = loop.call_later(delay, self._on_wakeup)
                return
            heapq.heappop(self._waiters)
            self._tokens = max(0.0, self._tokens - 1.0)
            self._in_flight += 1
            future.set_result(None)

    def _on_wakeup(self) -> None:
        self._wakeup = None
        self._dispatch()
