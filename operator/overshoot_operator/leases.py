"""Remote streams and their leases: acquire, renew, release, and read their state.

Role: the operator's side of the Overshoot lease (invariants 1, 4 and 6): a create gives a
`Held` lease, a keepalive renews it and brings a fresh token, a DELETE releases it. Each
function here is one Overshoot call plus the timing that follows from its answer (when the
next keepalive is due, from the expiry the server stated). No Kubernetes writes: what a
renewal changes in the Secret and status is the controller's next step.

Boundary: overshoot.py (whose gate applies the call limiter and the leadership check to
every HTTP request) and the loop clock.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from datetime import datetime

from pydantic import SecretStr

from overshoot_operator import metrics
from overshoot_operator import overshoot as ov
from overshoot_operator import schedule as sch
from overshoot_operator.limiter import Priority
from overshoot_operator.registry import Held


class Leases:
    def __init__(
        self,
        client: ov.OvershootClient,
        *,
        jitter: float,
        loop_time: Callable[[], float],
        wall: Callable[[], datetime],
        rng: random.Random,
    ) -> None:
        self.client = client
        self._jitter = jitter
        self._loop_time = loop_time
        self._wall = wall
        self._rng = rng

    # ---- timing --------------------------------------------------------------------

    def _seconds_left(self, expires_at_ms: int) -> float:
        return expires_at_ms / 1000.0 - self._wall().timestamp()

    def next_keepalive_at(self, held: Held, *, interval: float) -> float:
        delay = sch.next_keepalive_delay(
            seconds_to_expiry=self._seconds_left(held.expires_at_ms),
            interval=interval,
            jitter=self._jitter,
            rng=self._rng,
        )
        return self._loop_time() + delay

    def retry_keepalive_at(
        self, held: Held, *, interval: float, retry_after: float | None
    ) -> float:
        delay = sch.retry_keepalive_delay(
            seconds_to_expiry=self._seconds_left(held.expires_at_ms),
            interval=interval,
            retry_after=retry_after,
            rng=self._rng,
        )
        return self._loop_time() + delay

    def comfortably_alive(self, expires_at_ms: int) -> bool:
        """Whether a stored lease can be resumed without a call (invariant 3)."""
        return self._seconds_left(expires_at_ms) > sch.SAFETY_MARGIN_SECONDS

    # ---- calls ---------------------------------------------------------------------

    async def create(
        self,
        api_key: SecretStr,
        *,
        uid: str,
        interval: float,
        region: str | None = None,
        revision: str | None = None,
        pull: ov.CameraSource | None = None,
    ) -> Held:
        """POST /streams: a new stream whose id is not yet written down anywhere.

        `pull` (a camera) makes Overshoot pull it (ServerPull); an answer that still hands
        out a publish token means the API ignored the source (`ServerPullUnsupported`,
        after the stream was released again). `revision` is what it is created with."""
        created = await self.client.create_stream(api_key, source=pull, region=region)
        held = Held(created.id, uid, api_key, created.expires_at_ms, recorded=False)
        held.region = created.region
        if pull is not None:
            if created.publish is not None and created.source is None:
                # Guess: an API version before camera sources ignores the body's source
                # and makes an ordinary stream. Nobody would publish into it: let it go.
                with contextlib.suppress(ov.OvershootError):
                    await self.client.delete_stream(api_key, created.id, region=created.region)
                raise ov.ServerPullUnsupported(created.id)
            held.delivery = "ServerPull"
        held.revision = revision
        held.publish = created.publish
        held.acquired_at = self._loop_time()
        held.keepalive_at = self.next_keepalive_at(held, interval=interval)
        return held

    async def renew(self, held: Held, *, interval: float) -> None:
        """POST /streams/{id}/keepalive; on success the lease, token and next due time are
        updated in `held`. Raises OvershootError (NotFound: the stream ended)."""
        lateness = max(0.0, self._loop_time() - held.keepalive_at)
        metrics.KEEPALIVE_LATENESS.observe(lateness)
        try:
            result = await self.client.keepalive(held.api_key, held.stream_id, region=held.region)
        except ov.NotFound:
            metrics.KEEPALIVES.labels("ended").inc()
            raise
        except ov.OvershootError:
            metrics.KEEPALIVES.labels("error").inc()
            raise
        metrics.KEEPALIVES.labels("ok").inc()
        held.region = result.region or held.region
        held.expires_at_ms = result.expires_at_ms
        held.last_keepalive = self._wall()
        if result.publish is not None:
            held.publish = result.publish
        held.keepalive_at = self.next_keepalive_at(held, interval=interval)

    async def adopt(
        self, api_key: SecretStr, stream_id: str, *, uid: str, interval: float, region: str | None
    ) -> Held:
        """Take over a stream known by id (stored in status, or an annotation) with a
        keepalive, which proves it alive and brings a token (none for a pulled stream).
        `region` is where status last saw it; a wrong or unknown one is corrected by the
        client following the API's region_error."""
        held = Held(stream_id, uid, api_key, expires_at_ms=0, keepalive_at=self._loop_time())
        held.region = region
        held.acquired_at = self._loop_time()
        await self.renew(held, interval=interval)
        return held

    def resume(
        self,
        api_key: SecretStr,
        stream_id: str,
        *,
        uid: str,
        expires_at_ms: int,
        interval: float,
    ) -> Held:
        """A stored lease that is comfortably alive, resumed without any call: its next
        keepalive is scheduled from the stored expiry (restarts spread themselves)."""
        held = Held(stream_id, uid, api_key, expires_at_ms, secret_stream_id=stream_id)
        held.acquired_at = self._loop_time()
        held.keepalive_at = self.next_keepalive_at(held, interval=interval)
        return held

    async def release(self, api_key: SecretStr, stream_id: str, *, region: str | None) -> bool:
        """DELETE /streams/{id}: True if deleted now, False if it was already gone."""
        return await self.client.delete_stream(api_key, stream_id, region=region)

    async def end_reason(self, api_key: SecretStr, stream_id: str, *, region: str | None) -> str:
        """Why a stream ended, if its tombstone is still readable."""
        try:
            state = await self.client.get_stream(
                api_key, stream_id, priority=Priority.GET, region=region
            )
        except ov.OvershootError:
            return "unknown"
        return state.end_reason or ("unknown" if state.ended else "active")

    async def state(self, held: Held, *, priority: Priority = Priority.POLL) -> ov.StreamState:
        """GET /streams/{id}, by default at the lowest priority (a status poll)."""
        return await self.client.get_stream(
            held.api_key, held.stream_id, priority=priority, region=held.region
        )
