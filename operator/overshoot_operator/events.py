"""Kubernetes Events about OvershootStreams, posted in the background and aggregated.

Role: the one Event recorder (client-go's EventRecorder and its correlator are the model).
The first Event of a kind (object, type, reason, message) is created; a repeat within
`AGGREGATE_SECONDS` bumps that Event's `count` and `lastTimestamp` instead of adding one,
and such bumps are sent at most every `PATCH_EVERY_SECONDS` (repeats in between are folded
into the next one). A retry loop of a problem a user must fix therefore shows as one Event
with a growing count, not a hundred Events. Posting never blocks or fails the caller.

Boundary: kube.py's Event calls; messages are the caller's and never carry secrets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from overshoot_operator import decisions as dec
from overshoot_operator import resource as res
from overshoot_operator.kube import Kube, KubeError, NotFoundError

logger = logging.getLogger(__name__)

AGGREGATE_SECONDS = 600.0
PATCH_EVERY_SECONDS = 60.0
# Kubernetes caps Event messages at 1 KiB.
MAX_MESSAGE = 1024
COMPONENT = "overshoot-operator"


@dataclass(slots=True)
class _Seen:
    name: str | None  # the Event's name once created
    namespace: str
    count: int
    sent_count: int
    first: datetime
    last: datetime
    last_sent: float


class EventRecorder:
    def __init__(
        self, kube: Kube, *, clock: Callable[[], datetime], monotonic: Callable[[], float]
    ) -> None:
        self._kube = kube
        self._clock = clock
        self._monotonic = monotonic
        self._seen: dict[tuple[str, str, str, str], _Seen] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def normal(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self.record(obj, "Normal", reason, message)

    def warning(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        self.record(obj, "Warning", reason, message)

    def record(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        message = message[:MAX_MESSAGE]
        key = (meta.get("uid", ""), type_, reason, message)
        now, mono = self._clock(), self._monotonic()
        seen = self._seen.get(key)
        if seen is not None and (now - seen.last).total_seconds() < AGGREGATE_SECONDS:
            seen.count += 1
            seen.last = now
            if seen.name is not None and mono - seen.last_sent >= PATCH_EVERY_SECONDS:
                seen.last_sent = mono
                self._spawn(self._bump(seen))
            return
        seen = _Seen(None, meta["namespace"], 1, 1, now, now, mono)
        self._seen[key] = seen
        self._spawn(self._create(obj, type_, reason, message, seen))
        if len(self._seen) > 4096:
            self._prune(now)

    def forget(self, uid: str) -> None:
        """Drop the aggregation state of an object that is gone."""
        for key in [k for k in self._seen if k[0] == uid]:
            del self._seen[key]

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _prune(self, now: datetime) -> None:
        self._seen = {
            k: s
            for k, s in self._seen.items()
            if (now - s.last).total_seconds() < AGGREGATE_SECONDS
        }

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _create(
        self, obj: Mapping[str, Any], type_: str, reason: str, message: str, seen: _Seen
    ) -> None:
        meta = obj["metadata"]
        stamp = dec.rfc3339(seen.first) or ""
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", res.API_VERSION),
                "kind": obj.get("kind", res.KIND),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            seen.name = await self._kube.create_event(meta["namespace"], body) or None
        except Exception as err:  # an Event must never fail the caller
            logger.warning(
                "Posting Event %s about %s/%s failed: %s",
                reason,
                meta["namespace"],
                meta["name"],
                _why(err),
            )
            self._drop(seen)  # the next repeat tries to create it again
            return
        if seen.count > seen.sent_count:
            await self._bump(seen)

    async def _bump(self, seen: _Seen) -> None:
        if seen.name is None:
            return
        count = seen.count
        try:
            await self._kube.patch_event(
                seen.namespace,
                seen.name,
                {"count": count, "lastTimestamp": dec.rfc3339(seen.last)},
            )
            seen.sent_count = count
        except NotFoundError:
            # Events expire (the API server's event TTL, an hour by default): the next
            # repeat creates a new one, as client-go does.
            self._drop(seen)
        except Exception as err:
            logger.warning("Updating Event %s/%s failed: %s", seen.namespace, seen.name, _why(err))

    def _drop(self, seen: _Seen) -> None:
        for key, value in list(self._seen.items()):
            if value is seen:
                del self._seen[key]


def _why(err: Exception) -> str:
    return str(err) if isinstance(err, KubeError) else type(err).__name__
