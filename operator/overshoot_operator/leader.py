"""Leader election on a coordination.k8s.io Lease: one replica acts, the others stand by.

Role: the right to act. Two operator replicas (the chart's HA mode, or the two Pods of a
rolling update) must never both create, delete or renew streams: a standby that renews is a
doubled bill, one that recreates a stream the leader just deleted is a leak. Every replica
competes for one Lease, as client-go's leaderelection does; the winner runs the operator,
renews the Lease every `retry_period`, and stops acting the moment it cannot show a renewal
younger than `renew_deadline`. Others take over once the Lease has not changed for
`lease_duration` by their own clock (client-go's observed-time rule: no clock is compared
across machines). A replica that lost the Lease exits (main.py), and comes back as a standby
with nothing in memory it could act on.

One exception, on purpose: while the API server is unreachable (renewals fail with no
answer, or with a refusal such as the 403 of an API server whose RBAC caches are still
filling after a restart), the leader goes on renewing the remote streams it already holds
(`may_renew`), and does nothing else. Nobody can take the Lease from it
without the API server, and stopping would let every stream expire during an API server
outage. Only in a network partition that cuts off this replica alone can the new leader and
this one both renew the same streams; keepalives are idempotent, nothing is created or
deleted, and the first renewal that reaches the API server again ends it.

Boundary: the Lease calls of kube.py (on a thread of their own) and the monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

from overshoot_operator.kube import ConflictError, KubeError

logger = logging.getLogger(__name__)


class NotLeading(Exception):
    """This replica may not act now (standby, lost the Lease, or cannot renew it)."""


class Role(Enum):
    STANDBY = "standby"
    LEADING = "leading"
    # Was leading; the API server does not answer (or refuses), so the Lease cannot be
    # renewed; only the held streams' keepalives go on.
    UNREACHABLE = "unreachable"
    LOST = "lost"


class LeaseApi(Protocol):
    async def get_lease(
        self, namespace: str, name: str, *, read_timeout: float
    ) -> dict[str, Any] | None: ...

    async def create_lease(
        self, namespace: str, body: dict[str, Any], *, read_timeout: float
    ) -> dict[str, Any]: ...

    async def replace_lease(
        self, namespace: str, name: str, body: dict[str, Any], *, read_timeout: float
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Timing:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        # client-go's rules: the leader gives up before anyone may take over.
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(
                "leader election needs leaseDuration > renewDeadline > retryPeriod > 0, got "
                f"{self.lease_duration}, {self.renew_deadline}, {self.retry_period}"
            )


def _micro_time(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leadership:
    """The Lease `namespace/name`, competed for as `identity`."""

    def __init__(
        self,
        api: LeaseApi,
        *,
        namespace: str,
        name: str,
        identity: str,
        timing: Timing,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self._monotonic = monotonic
        self._wall = wall
        self.role = Role.STANDBY
        self._renewed_at: float | None = None
        self._unreachable_at: float | None = None
        # What we last saw of the Lease and when (our clock): the basis of expiry.
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        # Set when the last answer showed another replica holding an unexpired Lease.
        self._held_by_other_at: float | None = None
        self.on_change: Callable[[Role], None] | None = None

    @property
    def what(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    # ---- what the rest of the operator asks --------------------------------------------

    def may_act(self) -> bool:
        """Full rights: create, delete, renew, write. Only with a fresh renewal."""
        return self.role is Role.LEADING and self._within_deadline()

    def may_renew(self) -> bool:
        """Keepalives of streams already held: also while the API server is unreachable,
        as long as that was seen by a renewal attempt just now (a replica that was frozen
        for a while must first learn whether it still leads)."""
        if self.may_act():
            return True
        # "Just now": within one retry period plus the longest an attempt may take (it
        # waits up to the renew deadline for an API server that does not answer).
        recent = 2 * self.timing.retry_period + self.timing.renew_deadline
        return (
            self.role in (Role.LEADING, Role.UNREACHABLE)
            and self._unreachable_at is not None
            and self._monotonic() - self._unreachable_at < recent
        )

    def check_act(self) -> None:
        if not self.may_act():
            raise NotLeading(f"not the leader ({self.role.value}) of {self.what}")

    def check_renew(self) -> None:
        if not self.may_renew():
            raise NotLeading(f"not the leader ({self.role.value}) of {self.what}")

    # ---- the election ------------------------------------------------------------------

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica holds the Lease (True) or `stop` is set (False)."""
        waiting_logged = False
        while not stop.is_set():
            try:
                if await self._try_acquire_or_renew():
                    self._set_role(Role.LEADING)
                    logger.info("Acquired %s as %s", self.what, self.identity)
                    return True
            except KubeError as err:
                logger.warning("Could not read or take %s: %s", self.what, err)
            if not waiting_logged:
                logger.info("Waiting for %s (held by another replica)", self.what)
                waiting_logged = True
            await _wait(stop, self.timing.retry_period)
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew until `stop` is set or the Lease is lost (then the role is LOST)."""
        while not stop.is_set():
            await _wait(stop, self.timing.retry_period)
            if stop.is_set():
                return
            was_acting = self.may_act()
            try:
                if await self._try_acquire_or_renew():
                    if not was_acting:
                        # Work refused meanwhile must run again (on_change re-queues it).
                        logger.info("Renewed %s again", self.what)
                        self._set_role(Role.LEADING, notify=True)
                    continue
            except KubeError as err:
                # No answer, or a refusal (an API server that just restarted answers 403
                # until its RBAC caches fill): no sign that anyone else leads, and nobody
                # else can take the Lease through that API server either.
                self._unreachable_at = self._monotonic()
                if self.role is Role.LEADING and not self.may_act():
                    logger.warning(
                        "Cannot renew %s (%s): renewing the remote streams this replica "
                        "holds, acting on nothing else until the API server answers",
                        self.what,
                        err,
                    )
                    self._set_role(Role.UNREACHABLE)
                continue
            # The API server answered and the Lease is not ours: taken by another replica
            # (or our write lost a race; the next read tells which).
            if self._held_by_other_at is not None:
                self._set_role(Role.LOST)
                logger.error("Lost %s: another replica holds it", self.what)
                return

    def _within_deadline(self) -> bool:
        return (
            self._renewed_at is not None
            and self._monotonic() - self._renewed_at < self.timing.renew_deadline
        )

    async def release(self) -> None:
        """Give the Lease up on a clean stop, so a standby takes over at once."""
        if self.role not in (Role.LEADING, Role.UNREACHABLE):
            return
        self._set_role(Role.STANDBY)
        timeout = self.timing.retry_period
        # A renewal already in flight may land between the read and the write (409): read
        # again. Three tries: nothing else of ours writes the Lease once we stand by.
        for attempt in range(3):
            try:
                lease = await self._api.get_lease(self.namespace, self.name, read_timeout=timeout)
                holder = (lease or {}).get("spec", {}).get("holderIdentity")
                if lease is None or holder != self.identity:
                    return
                now = _micro_time(self._wall())
                lease["spec"].update(holderIdentity=None, leaseDurationSeconds=1, renewTime=now)
                await self._api.replace_lease(
                    self.namespace, self.name, lease, read_timeout=timeout
                )
            except ConflictError as err:
                if attempt < 2:
                    continue
                logger.warning("Could not release %s (%s); it expires on its own", self.what, err)
                return
            except KubeError as err:
                logger.warning("Could not release %s (%s); it expires on its own", self.what, err)
                return
            logger.info("Released %s", self.what)
            return

    # ---- one attempt -------------------------------------------------------------------

    async def _try_acquire_or_renew(self) -> bool:
        # Each call may take up to the renew deadline (client-go bounds a whole attempt by
        # it): a slow API server delays a renewal, it does not fail it.
        timeout = self.timing.renew_deadline
        now = self._wall()
        stamp = _micro_time(now)
        lease = await self._api.get_lease(self.namespace, self.name, read_timeout=timeout)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(acquire=stamp, renew=stamp, transitions=0),
            }
            try:
                await self._api.create_lease(self.namespace, body, read_timeout=timeout)
            except ConflictError:
                return False  # another replica created it a moment ago
            return self._renewed()
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (
            holder,
            spec.get("renewTime"),
            spec.get("leaseDurationSeconds"),
            lease["metadata"].get("resourceVersion"),
        )
        if record != self._observed:
            self._observed = record
            self._observed_at = self._monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.timing.lease_duration)
        unexpired = self._observed_at + duration > self._monotonic()
        if holder and holder != self.identity and unexpired:
            self._held_by_other_at = self._monotonic()
            # If we led: someone took over while we could not renew. Stop now, whatever
            # the deadline says.
            self._renewed_at = None
            return False
        self._held_by_other_at = None
        transitions = int(spec.get("leaseTransitions") or 0)
        ours = holder == self.identity
        lease["spec"] = self._spec(
            acquire=spec.get("acquireTime") if ours else stamp,
            renew=stamp,
            transitions=transitions if ours else transitions + 1,
        )
        try:
            await self._api.replace_lease(self.namespace, self.name, lease, read_timeout=timeout)
        except ConflictError:
            return False
        return self._renewed()

    def _spec(self, *, acquire: str | None, renew: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.timing.lease_duration),
            "acquireTime": acquire,
            "renewTime": renew,
            "leaseTransitions": transitions,
        }

    def _renewed(self) -> bool:
        self._renewed_at = self._monotonic()
        self._unreachable_at = None
        return True

    def _set_role(self, role: Role, *, notify: bool = False) -> None:
        if role is not self.role or notify:
            self.role = role
            if self.on_change is not None:
                self.on_change(role)


class AlwaysLeading:
    """Leader election switched off (one replica by construction, e.g. local runs)."""

    role = Role.LEADING
    what = "no leader election"

    def may_act(self) -> bool:
        return True

    def may_renew(self) -> bool:
        return True

    def check_act(self) -> None:
        return None

    def check_renew(self) -> None:
        return None


Gate = Leadership | AlwaysLeading


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):  # no extra task (see schedule.DueQueue)
            await stop.wait()
