"""Status polls: GET /streams/{id} for each held stream, feeding the controller.

Role: the operator's view of the remote side (invariant 7: `Publishing` only from what
Overshoot reports). A poll is a read; it never acts. When one is due, it checks from the
registry that the resource still holds that stream, is not being deleted and that this
replica may act, reads the stream's state at the lowest call priority, leaves the answer in
the entry (`Entry.fetched`) and adds the key to the work queue, where `process` takes it in
(an ended stream is recreated there, under the key's serialization).

Polls run outside the key's processing on purpose: at a saturated call limit a poll may
wait long for a slot, and the key's keepalive must not wait behind it.

Cadence: every `status_poll_seconds` once frames flow; until then (and after they stop)
2 s doubling up to that, so `Publishing` appears within seconds of the first frame.

Boundary: leases.py for the call, the registry and the work queue.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime

from overshoot_operator import decisions as dec
from overshoot_operator import overshoot as ov
from overshoot_operator.leader import Gate, NotLeading
from overshoot_operator.leases import Leases
from overshoot_operator.registry import Entry, Fetched, Key, Registry
from overshoot_operator.schedule import DueQueue
from overshoot_operator.workqueue import WorkQueue

logger = logging.getLogger(__name__)

FIRST_POLL_SECONDS = 2.0


class Poller:
    def __init__(
        self,
        registry: Registry,
        leases: Leases,
        queue: WorkQueue[Key],
        leader: Gate,
        *,
        poll_seconds: float,
        fresh_seconds: float,
        wall: Callable[[], datetime],
        rng: random.Random,
    ) -> None:
        self._registry = registry
        self._leases = leases
        self._queue = queue
        self._leader = leader
        self._poll_seconds = poll_seconds
        self._fresh_seconds = fresh_seconds
        self._wall = wall
        self._rng = rng
        self._due: DueQueue[Key] = DueQueue(self._on_due, name="status-polls")
        self._tasks: dict[Key, asyncio.Task[None]] = {}

    def start(self) -> None:
        self._due.start()

    async def stop(self) -> None:
        await self._due.stop()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def __contains__(self, key: object) -> bool:
        return key in self._due or key in self._tasks

    def schedule(self, key: Key, delay: float) -> None:
        self._due.schedule(key, delay * self._rng.uniform(0.9, 1.1) if delay else 0.0)

    def cancel(self, key: Key) -> None:
        self._due.cancel(key)

    def _on_due(self, key: Key) -> None:
        if key in self._tasks:
            return  # the previous poll is still waiting for a slot
        self._tasks[key] = asyncio.create_task(self._poll(key), name=f"poll:{key}")

    async def _poll(self, key: Key) -> None:
        try:
            entry = self._registry.get(key)
            observed = entry.observed if entry else None
            held = entry.held if entry else None
            if entry is None or held is None or observed is None or observed.deleting:
                return  # nothing to poll any more: whoever acquires a stream schedules one
            if not self._leader.may_act():
                self.schedule(key, self._poll_seconds)
                return
            stream_id = held.stream_id
            try:
                state: ov.StreamState | None = await self._leases.state(held)
                ended = state is not None and state.ended
            except ov.NotFound:
                state, ended = None, True
            except ov.OvershootError as err:
                # Status can wait; keepalive errors are what conditions report.
                logger.debug("Status poll of %s failed: %s", entry.owner, err)
                self.schedule(key, self._poll_seconds)
                return
            except NotLeading:
                self.schedule(key, self._poll_seconds)
                return
            current = self._registry.get(key)
            if current is not entry or current.held is None or current.held.stream_id != stream_id:
                return  # released or recreated meanwhile; that path scheduled its own poll
            entry.fetched = Fetched(stream_id, state, ended)
            self._queue.add(key)
            if not ended:
                self.schedule(key, self._next_delay(entry, state))
        finally:
            self._tasks.pop(key, None)

    def _next_delay(self, entry: Entry, state: ov.StreamState | None) -> float:
        # A pulled stream's pulls count like frames (its room gets them republished too).
        last = (state.last_pull or state.last_frame_at_ms) if state else None
        if dec.frames_fresh(last, now=self._wall(), fresh_seconds=self._fresh_seconds):
            entry.media.polls_without_frames = 0
            return self._poll_seconds
        entry.media.polls_without_frames += 1
        exponent = min(entry.media.polls_without_frames, 5)
        return min(self._poll_seconds, FIRST_POLL_SECONDS * float(2**exponent))
