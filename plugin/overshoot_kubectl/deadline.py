"""One overall time budget (`--timeout`) shared by every network step of a command.

Role: each step awaits under `deadline.run(step, what=...)`, which gives it what is left of
the budget and turns running out into one `TimedOut` line naming the step. Steps that
block in a thread (the kubernetes client) are also handed `remaining()` as their own
request timeout, so a thread never outlives the budget by much.

Boundary: asyncio and a monotonic clock (injectable for tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from overshoot_kubectl.errors import TimedOut

T = TypeVar("T")

# A step is never started with less than this left: it could not finish anyway.
MIN_STEP_SECONDS = 0.05


class Deadline:
    """`total` seconds from now."""

    def __init__(self, total: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self._clock = clock
        self._end = clock() + total

    def remaining(self) -> float:
        return max(0.0, self._end - self._clock())

    def expired(self, what: str) -> TimedOut:
        return TimedOut(f"timed out after {self.total:g} s {what}; retry with a longer --timeout")

    async def run(self, step: Awaitable[T], *, what: str, grace: float = 0.0) -> T:
        """`step` within the time left; TimedOut (naming `what`) when it runs out.

        `grace` is extra time for a step that bounds itself with `remaining()` and reports
        its own, more precise error when that runs out.
        """
        left = self.remaining()
        if left < MIN_STEP_SECONDS:
            if asyncio.iscoroutine(step):
                step.close()  # never awaited: no "coroutine was never awaited" warning
            raise self.expired(what)
        try:
            return await asyncio.wait_for(step, left + grace)
        except TimeoutError:
            raise self.expired(what) from None
