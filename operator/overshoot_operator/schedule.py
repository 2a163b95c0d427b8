"""When to call keepalive and when to poll status: pure timing decisions and one heap.

Role: the one keepalive mechanism of the process. Every live stream has one entry in a
heap keyed by its next due time; one task sleeps until the earliest entry and hands due
keys to a callback. Cost per stream is a heap entry and a dict slot, not a task or a
timer, so 10,000 streams stay cheap (bench/operator_scale.py measures it).

The timing rules (invariant 4), all relative to the lease's expiry as the server stated it:
- happy path: next keepalive after `interval` (jittered), and never later than `margin`
  before expiry, so clock skew and one slow call cannot lose the lease;
- error path: retry after half the time left (floored at `min_retry`), so retries get
  faster as the deadline nears, never slower, and are never more frequent than every
  `min_retry`; past expiry it falls back to the happy-path interval (the stream is gone
  or will answer 404, and hammering a down API helps nobody).

Boundary: pure functions plus an asyncio task; time is the running loop's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

# Never aim at the very end of the lease: the server's clock decides and skew is real.
SAFETY_MARGIN_SECONDS = 60.0
MIN_RETRY_SECONDS = 5.0


def next_keepalive_delay(
    *,
    seconds_to_expiry: float,
    interval: float,
    jitter: float,
    margin: float = SAFETY_MARGIN_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """Seconds until the next keepalive after a successful one (or after create)."""
    rng = rng or random.Random()
    jittered = interval * (1.0 + rng.uniform(-jitter, jitter))
    latest = seconds_to_expiry - margin
    return max(MIN_RETRY_SECONDS, min(jittered, latest))


def create_retry_delay(
    failures: int,
    *,
    retry_after: float | None = None,
    base: float = 15.0,
    cap: float = 300.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds until a refused or failed create is tried again (`failures` counts from 1).

    A refused create is usually a quota (a per-key stream cap answers 429 with
    Retry-After: 1, and no stream ends within a second), so it backs off from `base` to
    `cap`; a longer Retry-After is honoured, a shorter one is not a reason to hurry.
    """
    return backoff_delay(failures, base=base, cap=cap, retry_after=retry_after, rng=rng)


def retry_keepalive_delay(
    *,
    seconds_to_expiry: float,
    interval: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds until the next attempt after a failed keepalive.

    Half the time left, floored at MIN_RETRY_SECONDS and capped at the interval; a
    server's Retry-After is honoured unless it would lose the lease.
    """
    rng = rng or random.Random()
    if seconds_to_expiry <= 0:
        delay = interval
    else:
        delay = min(interval, max(MIN_RETRY_SECONDS, seconds_to_expiry / 2.0))
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(MIN_RETRY_SECONDS, seconds_to_expiry - 1.0)))
    return delay * rng.uniform(0.9, 1.1)


def backoff_delay(
    attempt: int,
    *,
    base: float = 2.0,
    cap: float = 300.0,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with full jitter (attempt counts from 1), honouring Retry-After."""
    rng = rng or random.Random()
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    delay = rng.uniform(ceiling / 2.0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


K = TypeVar("K", bound=Hashable)


class DueQueue(Generic[K]):
    """Keys due at loop times; one task calls `on_due(key)` for each key when it is due.

    `on_due` is synchronous and must be quick (it enqueues; the work happens elsewhere).
    Re-scheduling a key replaces its previous time (stale heap entries are skipped
    lazily); `cancel` forgets it.
    """

    def __init__(self, on_due: Callable[[K], None], *, name: str) -> None:
        self._on_due = on_due
        self._name = name
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, tuple[float, int]] = {}
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def due_at(self, key: K) -> float | None:
        entry = self._due.get(key)
        return entry[0] if entry else None

    def schedule(self, key: K, delay: float) -> None:
        self.schedule_at(key, asyncio.get_running_loop().time() + max(0.0, delay))

    def schedule_at(self, key: K, when: float) -> None:
        seq = next(self._seq)
        self._due[key] = (when, seq)
        heapq.heappush(self._heap, (when, seq, key))
        if self._heap[0][1] == seq:
            self._changed.set()

    def cancel(self, key: K) -> None:
        self._due.pop(key, None)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._changed.clear()
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                when, seq, key = heapq.heappop(self._heap)
                if self._due.get(key) != (when, seq):
                    continue  # re-scheduled or cancelled since
                del self._due[key]
                try:
                    self._on_due(key)
                except Exception:
                    # The last line of defence: one bug must not stop every other key.
                    logger.exception("Unhandled error in %s for %s", self._name, key)
            if len(self._heap) > 4 * len(self._due) + 1024:
                # Rescheduling leaves stale entries behind; rebuild now and then so the
                # heap stays proportional to the keys it holds.
                self._heap = [(w, s, k) for k, (w, s) in self._due.items()]
                heapq.heapify(self._heap)
            timeout = self._heap[0][0] - now if self._heap else None
            # asyncio.timeout, not wait_for: wait_for wraps the wait in a task of its own,
            # and kopf's shutdown waits 5 s for every task it does not know before it
            # cancels them (a stopping leader would hold its Lease that much longer).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
