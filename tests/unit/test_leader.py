"""Leader election against an in-memory Lease API, on clocks the tests move by hand.

The expiry rules (observed time, renew deadline) are checked on injected clocks, one
attempt at a time. `acquire` and `hold` wait `retry_period` on the real loop between
attempts, so the loop tests use a tiny Timing and wait on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from overshoot_operator.kube import ConflictError, KubeError, KubeUnavailable, NotFoundError
from overshoot_operator.leader import (
    AlwaysLeading,
    Leadership,
    NotLeading,
    Role,
    Timing,
)

pytestmark = pytest.mark.unit

NS, NAME = "overshoot-system", "overshoot-operator-leader"
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SLOW = Timing(lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)
FAST = Timing(lease_duration=0.4, renew_deadline=0.3, retry_period=0.05)
DEADLINE = 5.0  # seconds any condition of a loop test gets before the test fails
EPSILON = 1e-6  # past a boundary despite float error (1000.0 + 0.3 - 1000.0 < 0.3)


def micro(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Clocks:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.now = T0

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.now += timedelta(seconds=seconds)


class FakeLeases:
    """One namespace's Leases in memory, with the API server's resourceVersion rules."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self._version = 0
        self.unreachable = False
        self.refuse = False
        self.calls: list[str] = []
        # Called at the start of the next API call (then cleared): lets a test act as
        # another replica between our read and our write, or end an attempt.
        self.on_call: list[Callable[[str], None]] = []
        self.failed = asyncio.Event()  # set by every call that fails for the switches
        self.hide_next_get = False

    def _enter(self, what: str) -> None:
        self.calls.append(what)
        for hook in list(self.on_call):
            hook(what)
        if self.unreachable:
            self.failed.set()
            raise KubeUnavailable(f"{what} failed: ConnectionRefusedError")
        if self.refuse:
            self.failed.set()
            raise KubeError(f"{what} failed: 403 Forbidden", status=403)

    def _store(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self._version)
        self.leases[name] = stored
        return copy.deepcopy(stored)

    async def get_lease(
        self, namespace: str, name: str, *, read_timeout: float
    ) -> dict[str, Any] | None:
        assert namespace == NS and read_timeout > 0
        self._enter("get")
        if self.hide_next_get:
            self.hide_next_get = False
            return None
        found = self.leases.get(name)
        return copy.deepcopy(found) if found is not None else None

    async def create_lease(
        self, namespace: str, body: dict[str, Any], *, read_timeout: float
    ) -> dict[str, Any]:
        assert namespace == NS and read_timeout > 0
        self._enter("create")
        name = body["metadata"]["name"]
        if name in self.leases:
            raise ConflictError(f"Create Lease {namespace}/{name} failed: 409", status=409)
        return self._store(name, body)

    async def replace_lease(
        self, namespace: str, name: str, body: dict[str, Any], *, read_timeout: float
    ) -> dict[str, Any]:
        assert namespace == NS and read_timeout > 0
        self._enter("replace")
        current = self.leases.get(name)
        if current is None:
            raise NotFoundError(f"Update Lease {namespace}/{name} failed: 404", status=404)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ConflictError(f"Update Lease {namespace}/{name} failed: 409", status=409)
        return self._store(name, body)

    # ---- another replica -----------------------------------------------------------------

    def put(
        self,
        holder: str | None,
        *,
        renew: datetime,
        duration: int = 15,
        transitions: int = 0,
        acquire: datetime | None = None,
    ) -> None:
        """Another replica writes the Lease (create or update, bumping resourceVersion)."""
        self._store(
            NAME,
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": NAME, "namespace": NS},
                "spec": {
                    "holderIdentity": holder,
                    "leaseDurationSeconds": duration,
                    "acquireTime": micro(acquire or renew),
                    "renewTime": micro(renew),
                    "leaseTransitions": transitions,
                },
            },
        )

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.leases[NAME]["spec"]
        return spec


def leadership(
    api: FakeLeases, clocks: Clocks, *, timing: Timing = SLOW, identity: str = "me"
) -> Leadership:
    return Leadership(
        api,
        namespace=NS,
        name=NAME,
        identity=identity,
        timing=timing,
        monotonic=clocks.monotonic,
        wall=clocks.wall,
    )


def role(le: Leadership) -> Role:
    """The role now (a call, so a type checker does not carry an earlier assert over)."""
    return le.role


async def attempt(le: Leadership, api: FakeLeases) -> bool:
    """Exactly one acquire-or-renew attempt, through the public `acquire`: `stop` is set
    by the attempt's first API call, so a failed attempt returns at once."""
    stop = asyncio.Event()

    def end(_: str) -> None:
        stop.set()
        api.on_call.remove(end)

    api.on_call.append(end)
    return await asyncio.wait_for(le.acquire(stop), DEADLINE)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for `condition`, failing after DEADLINE. The state lives in the code under
    test (a role, a queue's length), which offers no event to wait on: poll it."""

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), DEADLINE)
    except TimeoutError:
        pytest.fail(f"timed out waiting for: {what}")


# ---- Timing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lease", "renew", "retry"),
    [
        pytest.param(10.0, 10.0, 2.0, id="lease-equals-renew"),
        pytest.param(10.0, 15.0, 2.0, id="lease-below-renew"),
        pytest.param(15.0, 10.0, 10.0, id="renew-equals-retry"),
        pytest.param(15.0, 10.0, 12.0, id="renew-below-retry"),
        pytest.param(15.0, 10.0, 0.0, id="retry-zero"),
        pytest.param(15.0, 10.0, -1.0, id="retry-negative"),
        pytest.param(2.0, 10.0, 15.0, id="all-reversed"),
    ],
)
def test_timing_refuses_bad_orderings(lease: float, renew: float, retry: float) -> None:
    with pytest.raises(ValueError, match="leaseDuration > renewDeadline > retryPeriod"):
        Timing(lease_duration=lease, renew_deadline=renew, retry_period=retry)


def test_timing_defaults_are_valid() -> None:
    t = Timing()
    assert t.lease_duration > t.renew_deadline > t.retry_period > 0


def test_always_leading_allows_everything() -> None:
    gate = AlwaysLeading()
    assert gate.role is Role.LEADING
    assert gate.may_act() and gate.may_renew()
    gate.check_act()
    gate.check_renew()


# ---- acquiring ---------------------------------------------------------------------------


async def test_acquire_creates_the_lease_when_there_is_none() -> None:
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks)
    roles: list[Role] = []
    le.on_change = roles.append
    assert role(le) is Role.STANDBY and not le.may_act() and not le.may_renew()
    with pytest.raises(NotLeading, match="standby"):
        le.check_act()

    assert await le.acquire(asyncio.Event()) is True
    assert api.calls == ["get", "create"]
    assert api.spec() == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 15,
        "acquireTime": micro(T0),
        "renewTime": micro(T0),
        "leaseTransitions": 0,
    }
    assert role(le) is Role.LEADING and le.may_act() and le.may_renew()
    le.check_act()
    le.check_renew()
    assert roles == [Role.LEADING]


async def test_acquire_returns_false_when_stopped() -> None:
    api, clocks = FakeLeases(), Clocks()
    stop = asyncio.Event()
    stop.set()
    assert await leadership(api, clocks).acquire(stop) is False
    assert api.calls == []


async def test_a_create_that_loses_the_race_does_not_lead() -> None:
    api, clocks = FakeLeases(), Clocks()
    api.put("other", renew=T0)
    api.hide_next_get = True  # another replica created it between our read and our create
    le = leadership(api, clocks)
    assert await attempt(le, api) is False
    assert api.calls == ["get", "create"]
    assert role(le) is Role.STANDBY and not le.may_act()
    assert api.spec()["holderIdentity"] == "other"


async def test_a_replace_on_a_stale_resource_version_does_not_lead() -> None:
    api, clocks = FakeLeases(), Clocks()
    api.put(None, renew=T0 - timedelta(hours=1))  # released: free to take at once
    le = leadership(api, clocks)

    def other_takes_it(what: str) -> None:
        if what == "replace":
            api.on_call.remove(other_takes_it)
            api.put("other", renew=clocks.now)

    api.on_call.append(other_takes_it)
    assert await attempt(le, api) is False
    assert api.spec()["holderIdentity"] == "other"
    assert role(le) is Role.STANDBY


async def test_a_lease_another_keeps_renewing_is_never_taken() -> None:
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks)
    api.put("other", renew=clocks.now, transitions=2)
    for _ in range(20):  # 20 x 10 s: far past lease_duration in total
        clocks.advance(10.0)
        api.put("other", renew=clocks.now, transitions=2)
        assert await attempt(le, api) is False
    assert api.spec()["holderIdentity"] == "other"
    assert api.calls.count("replace") == 0
    assert not le.may_act() and not le.may_renew()


@pytest.mark.parametrize(
    ("duration", "waited", "taken"),
    [
        pytest.param(15, 0.0, False, id="just-seen"),
        pytest.param(15, 14.9, False, id="just-before-lease-duration"),
        pytest.param(15, 15.0, True, id="at-lease-duration"),
        pytest.param(15, 60.0, True, id="long-after"),
        # The Lease's own leaseDurationSeconds counts, not ours.
        pytest.param(30, 20.0, False, id="longer-duration-of-the-holder"),
        pytest.param(30, 30.0, True, id="longer-duration-of-the-holder-passed"),
    ],
)
async def test_a_stale_lease_is_taken_only_after_lease_duration_on_our_clock(
    duration: int, waited: float, taken: bool
) -> None:
    api, clocks = FakeLeases(), Clocks()
    # The holder stopped renewing an hour ago by the wall clock: that alone proves nothing
    # (clocks across machines are not compared).
    api.put("other", renew=T0 - timedelta(hours=1), duration=duration, transitions=3)
    le = leadership(api, clocks)
    assert await attempt(le, api) is False  # first sight of this record
    clocks.advance(waited)
    assert await attempt(le, api) is taken
    assert le.may_act() is taken
    if taken:
        assert api.spec() == {
            "holderIdentity": "me",
            "leaseDurationSeconds": 15,
            "acquireTime": micro(clocks.now),
            "renewTime": micro(clocks.now),
            "leaseTransitions": 4,
        }
    else:
        assert api.spec()["holderIdentity"] == "other"


async def test_a_renewal_by_the_holder_restarts_the_observed_time() -> None:
    api, clocks = FakeLeases(), Clocks()
    api.put("other", renew=T0)
    le = leadership(api, clocks)
    assert await attempt(le, api) is False
    clocks.advance(10.0)
    api.put("other", renew=clocks.now)  # one more renewal, then it stops
    assert await attempt(le, api) is False
    clocks.advance(10.0)  # 20 s since the first sight, 10 s since the last change
    assert await attempt(le, api) is False
    clocks.advance(5.0)
    assert await attempt(le, api) is True


async def test_a_released_lease_is_taken_at_once() -> None:
    api, clocks = FakeLeases(), Clocks()
    api.put(None, renew=T0, duration=1, transitions=5)
    le = leadership(api, clocks)
    assert await attempt(le, api) is True
    assert api.spec()["holderIdentity"] == "me"
    assert api.spec()["leaseTransitions"] == 6


async def test_renewing_our_own_keeps_acquire_time_and_transitions() -> None:
    api, clocks = FakeLeases(), Clocks()
    api.put(None, renew=T0, transitions=1)
    le = leadership(api, clocks)
    assert await attempt(le, api) is True
    acquired = api.spec()["acquireTime"]
    assert api.spec()["leaseTransitions"] == 2
    for _ in range(3):
        clocks.advance(2.0)
        assert await attempt(le, api) is True
        assert api.spec()["acquireTime"] == acquired
        assert api.spec()["leaseTransitions"] == 2
        assert api.spec()["renewTime"] == micro(clocks.now)


async def test_our_own_lease_from_a_previous_run_is_renewed_at_once() -> None:
    api, clocks = FakeLeases(), Clocks()
    api.put("me", renew=T0 - timedelta(seconds=3), transitions=7, acquire=T0 - timedelta(hours=1))
    le = leadership(api, clocks)
    assert await attempt(le, api) is True
    assert api.spec()["leaseTransitions"] == 7
    assert api.spec()["acquireTime"] == micro(T0 - timedelta(hours=1))


@pytest.mark.parametrize(
    "switch", [pytest.param("unreachable", id="unreachable"), pytest.param("refuse", id="403")]
)
async def test_acquire_keeps_waiting_through_api_errors(switch: str) -> None:
    api, clocks = FakeLeases(), Clocks()
    setattr(api, switch, True)
    le = leadership(api, clocks, timing=FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(le.acquire(stop))
    await until(lambda: api.calls.count("get") >= 3, "three failed attempts")
    assert not task.done() and role(le) is Role.STANDBY
    setattr(api, switch, False)
    assert await asyncio.wait_for(task, DEADLINE) is True
    assert role(le) is Role.LEADING


# ---- the renew deadline ------------------------------------------------------------------


async def test_may_act_ends_at_the_renew_deadline() -> None:
    """A frozen process (monotonic jumps, no renewal ran) must stop acting, and may not
    even renew streams until an attempt shows why it could not renew."""
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks)
    assert await attempt(le, api) is True
    clocks.advance(9.9)
    assert le.may_act() and le.may_renew()
    clocks.advance(0.1)
    assert role(le) is Role.LEADING  # nobody noticed yet: the role alone is not enough
    assert not le.may_act() and not le.may_renew()
    with pytest.raises(NotLeading):
        le.check_act()
    with pytest.raises(NotLeading):
        le.check_renew()


async def test_unreachable_api_within_the_deadline_changes_nothing_yet() -> None:
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks, timing=FAST)
    roles: list[Role] = []
    le.on_change = roles.append
    assert await attempt(le, api) is True
    api.unreachable = True
    stop = asyncio.Event()
    hold = asyncio.create_task(le.hold(stop))
    await asyncio.wait_for(api.failed.wait(), DEADLINE)
    assert role(le) is Role.LEADING and le.may_act() and le.may_renew()
    stop.set()
    await asyncio.wait_for(hold, DEADLINE)
    assert roles == [Role.LEADING]


async def test_unreachable_api_while_leading_renews_streams_only() -> None:
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks, timing=FAST)
    roles: list[Role] = []
    le.on_change = roles.append
    assert await attempt(le, api) is True

    # Frozen past the deadline: no acting, and no renewing until an attempt has run.
    clocks.advance(FAST.renew_deadline + EPSILON)
    assert not le.may_act() and not le.may_renew()

    # That attempt finds the API server unreachable: renew streams, nothing else.
    api.unreachable = True
    stop = asyncio.Event()
    hold = asyncio.create_task(le.hold(stop))
    await asyncio.wait_for(api.failed.wait(), DEADLINE)
    await until(lambda: role(le) is Role.UNREACHABLE, "role UNREACHABLE")
    assert le.may_renew() and not le.may_act()
    with pytest.raises(NotLeading, match="unreachable"):
        le.check_act()
    le.check_renew()
    stop.set()
    await asyncio.wait_for(hold, DEADLINE)
    assert roles == [Role.LEADING, Role.UNREACHABLE]

    # The right to renew streams fades when no attempt confirms the API is unreachable
    # (an attempt may itself wait up to the renew deadline for an answer).
    window = 2 * FAST.retry_period + FAST.renew_deadline
    clocks.advance(window - 0.1)
    assert le.may_renew()
    clocks.advance(0.1 + EPSILON)
    assert not le.may_renew() and not le.may_act()

    # The API server answers again: leading, and told so (work refused meanwhile re-runs).
    api.unreachable = False
    stop = asyncio.Event()
    hold = asyncio.create_task(le.hold(stop))
    await until(lambda: roles[-1] is Role.LEADING, "on_change(LEADING)")
    assert role(le) is Role.LEADING and le.may_act() and le.may_renew()
    stop.set()
    await asyncio.wait_for(hold, DEADLINE)
    assert roles == [Role.LEADING, Role.UNREACHABLE, Role.LEADING]
    assert api.spec()["holderIdentity"] == "me"


async def test_a_renewal_after_a_stall_notifies_leading() -> None:
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks, timing=FAST)
    roles: list[Role] = []
    le.on_change = roles.append
    assert await attempt(le, api) is True
    clocks.advance(FAST.renew_deadline + 0.1)  # frozen; the Lease is still ours
    assert not le.may_act()
    stop = asyncio.Event()
    hold = asyncio.create_task(le.hold(stop))
    await until(lambda: len(roles) == 2, "a second on_change")
    assert roles == [Role.LEADING, Role.LEADING]
    assert le.may_act()
    stop.set()
    await asyncio.wait_for(hold, DEADLINE)


async def test_refused_renewals_hold_the_streams_like_an_unreachable_api() -> None:
    """A refusal (an API server that just restarted answers 403 until its RBAC caches
    fill) shows nobody else leading, and nobody can take the Lease through that API
    server either: past the deadline only keepalives go on, and a renewal that works
    again restores full rights."""
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks, timing=FAST)
    roles: list[Role] = []
    le.on_change = roles.append
    assert await attempt(le, api) is True
    api.refuse = True
    stop = asyncio.Event()
    hold = asyncio.create_task(le.hold(stop))
    await asyncio.wait_for(api.failed.wait(), DEADLINE)
    clocks.advance(FAST.renew_deadline + EPSILON)
    await until(lambda: role(le) is Role.UNREACHABLE, "the role UNREACHABLE")
    assert not le.may_act() and le.may_renew() and not hold.done()
    api.refuse = False
    await until(lambda: le.may_act(), "a renewal that works again")
    assert roles[-1] is Role.LEADING
    stop.set()
    await asyncio.wait_for(hold, DEADLINE)


async def test_hold_returns_lost_when_another_took_the_lease() -> None:
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks, timing=FAST)
    roles: list[Role] = []
    le.on_change = roles.append
    assert await attempt(le, api) is True
    stop = asyncio.Event()
    hold = asyncio.create_task(le.hold(stop))
    await until(lambda: api.calls.count("replace") >= 2, "two renewals")
    assert le.may_act()
    api.put("other", renew=clocks.now, transitions=1)
    await asyncio.wait_for(hold, DEADLINE)
    assert role(le) is Role.LOST and roles[-1] is Role.LOST
    # Still within the renew deadline by the clock, but the Lease is someone else's.
    assert not le.may_act() and not le.may_renew()
    assert api.spec()["holderIdentity"] == "other"


async def test_hold_returns_when_stopped() -> None:
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks, timing=FAST)
    assert await attempt(le, api) is True
    stop = asyncio.Event()
    hold = asyncio.create_task(le.hold(stop))
    await until(lambda: api.calls.count("replace") >= 1, "a renewal")
    stop.set()
    await asyncio.wait_for(hold, DEADLINE)
    assert role(le) is Role.LEADING


# ---- release -----------------------------------------------------------------------------


async def test_release_gives_the_lease_up() -> None:
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks)
    roles: list[Role] = []
    le.on_change = roles.append
    assert await attempt(le, api) is True
    clocks.advance(1.0)
    await le.release()
    spec = api.spec()
    assert spec["holderIdentity"] is None
    assert spec["leaseDurationSeconds"] == 1
    assert spec["renewTime"] == micro(clocks.now)
    assert role(le) is Role.STANDBY and not le.may_act()
    assert roles == [Role.LEADING, Role.STANDBY]
    # A standby takes the released Lease at once.
    other = leadership(api, Clocks(), identity="other")
    assert await attempt(other, api) is True


async def test_release_reads_again_when_its_own_renewal_landed_in_between() -> None:
    """A renewal still in flight writes the Lease between the release's read and its
    write (409): the release reads again and gives the Lease up all the same."""
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks)
    assert await attempt(le, api) is True

    def renewal_lands(what: str) -> None:
        if what == "replace":
            api.on_call.remove(renewal_lands)
            api.put(le.identity, renew=clocks.now, transitions=0)

    api.on_call.append(renewal_lands)
    await le.release()
    assert api.calls[-4:] == ["get", "replace", "get", "replace"]
    assert api.spec()["holderIdentity"] is None


async def test_release_does_not_touch_a_lease_held_by_another() -> None:
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks)
    assert await attempt(le, api) is True
    api.put("other", renew=clocks.now, transitions=1)
    await le.release()
    assert api.spec()["holderIdentity"] == "other"
    assert api.calls.count("replace") == 0


async def test_release_when_not_leading_makes_no_call() -> None:
    api, clocks = FakeLeases(), Clocks()
    api.put("other", renew=clocks.now)
    le = leadership(api, clocks)
    await le.release()
    assert api.calls == []


@pytest.mark.parametrize(
    "switch", [pytest.param("unreachable", id="unreachable"), pytest.param("refuse", id="403")]
)
async def test_release_failure_does_not_raise(switch: str) -> None:
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks)
    assert await attempt(le, api) is True
    setattr(api, switch, True)
    await le.release()
    assert role(le) is Role.STANDBY
    assert api.spec()["holderIdentity"] == "me"


async def test_unreachable_then_answered_by_another_holder_is_lost() -> None:
    api, clocks = FakeLeases(), Clocks()
    le = leadership(api, clocks, timing=FAST)
    assert await attempt(le, api) is True
    clocks.advance(FAST.renew_deadline + EPSILON)
    api.unreachable = True
    stop = asyncio.Event()
    hold = asyncio.create_task(le.hold(stop))
    await until(lambda: role(le) is Role.UNREACHABLE, "role UNREACHABLE")
    # Meanwhile (the partition was ours alone) a standby took over.
    api.put("other", renew=clocks.now, transitions=1)
    api.unreachable = False
    await asyncio.wait_for(hold, DEADLINE)
    assert role(le) is Role.LOST
    assert not le.may_act() and not le.may_renew()
