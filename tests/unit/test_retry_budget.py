"""The Overshoot client's retry budget, request gate and outcome observer, in-process.

An `httpx.MockTransport` answers; `sleep` is a no-op so retries never wait.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from pydantic import SecretStr

from overshoot_operator import overshoot as ov
from overshoot_operator.limiter import Priority

pytestmark = pytest.mark.unit

KEY = SecretStr("ovs_unit_budget_key")
SID = "2ea5a604-d225-4cd2-82ac-b907cb0b4f63"
BASE = "https://api.example.invalid/v1"
E = ov.Endpoint

KEEPALIVE_OK = {"id": SID, "expires_at_ms": 1_777_529_931_184, "ttl_seconds": 300}
CREATED = {
    "id": SID,
    "state": "active",
    "publish": {"type": "livekit", "url": "wss://lk.example", "token": "eyJ.t"},
    "expires_at_ms": 1_777_529_931_184,
}


async def no_sleep(_: float) -> None:
    return None


# ---- RetryBudget -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "ratio", "ops", "takes"),
    [
        pytest.param(3.0, 0.5, "tttt", [True, True, True, False], id="starts-full"),
        pytest.param(10.0, 0.5, "t" * 11, [True] * 10 + [False], id="default-capacity"),
        pytest.param(
            2.0,
            0.5,
            "ttt" + "s" + "t" + "s" + "t",
            [True, True, False, False, True],
            id="each-success-adds-ratio",
        ),
        pytest.param(
            2.0, 0.5, "s" * 20 + "ttt", [True, True, False], id="capped-at-capacity-when-full"
        ),
        pytest.param(
            2.0,
            0.5,
            "tt" + "s" * 20 + "ttt",
            [True, True, True, True, False],
            id="refills-only-up-to-capacity",
        ),
        pytest.param(
            1.0, 0.25, "t" + "sss" + "t" + "s" + "t", [True, False, True], id="quarter-ratio"
        ),
        pytest.param(0.5, 0.5, "t", [False], id="capacity-below-one-never-retries"),
    ],
)
def test_retry_budget(capacity: float, ratio: float, ops: str, takes: list[bool]) -> None:
    budget = ov.RetryBudget(ratio=ratio, capacity=capacity)
    got = []
    for op in ops:
        if op == "t":
            got.append(budget.take())
        else:
            budget.succeeded()
    assert got == takes


def test_retry_budget_defaults() -> None:
    budget = ov.RetryBudget()
    assert [budget.take() for _ in range(11)] == [True] * 10 + [False]


# ---- the client --------------------------------------------------------------------------


class Gate:
    """A request gate that records each entry and can refuse."""

    def __init__(self) -> None:
        self.entered: list[tuple[ov.Endpoint, Priority]] = []
        self.depth = 0
        self.refuse: Exception | None = None

    @contextlib.asynccontextmanager
    async def __call__(self, endpoint: ov.Endpoint, priority: Priority) -> AsyncIterator[None]:
        if self.refuse is not None:
            raise self.refuse
        self.entered.append((endpoint, priority))
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


class Server:
    """Canned answers, one per request; records the requests and the gate's state."""

    def __init__(self, answers: Callable[[httpx.Request], httpx.Response], gate: Gate) -> None:
        self.answers = answers
        self.gate = gate
        self.requests: list[httpx.Request] = []
        self.depth_seen: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.depth_seen.append(self.gate.depth)
        return self.answers(request)


def busy(_: httpx.Request) -> httpx.Response:
    return httpx.Response(503, json={"detail": "draining"})


def client(
    server: Server,
    *,
    budget: ov.RetryBudget | None = None,
    outcomes: list[tuple[ov.Endpoint, str]] | None = None,
) -> ov.OvershootClient:
    def observe(endpoint: ov.Endpoint, outcome: str) -> None:
        if outcomes is not None:
            outcomes.append((endpoint, outcome))

    return ov.OvershootClient(
        BASE,
        transport=httpx.MockTransport(server),
        sleep=no_sleep,
        gate=server.gate,
        observe=observe,
        retry_budget=budget,
    )


async def test_keepalive_retries_while_the_budget_lasts_then_sends_once() -> None:
    gate = Gate()
    server = Server(busy, gate)
    # Capacity for two calls' worth of retries (2 each), then spent.
    budget = ov.RetryBudget(ratio=0.5, capacity=4.0)
    per_call: list[int] = []
    async with client(server, budget=budget) as c:
        for _ in range(4):
            before = len(server.requests)
            with pytest.raises(ov.OvershootUnavailable):
                await c.keepalive(KEY, SID)
            per_call.append(len(server.requests) - before)
    assert per_call == [3, 3, 1, 1]
    assert len(gate.entered) == len(server.requests) == 8


async def test_keepalive_never_exceeds_its_attempts_with_a_full_budget() -> None:
    server = Server(busy, Gate())
    async with client(server, budget=ov.RetryBudget(capacity=1000.0)) as c:
        with pytest.raises(ov.OvershootUnavailable):
            await c.keepalive(KEY, SID)
    assert len(server.requests) == 3


async def test_successes_earn_retries_back() -> None:
    gate = Gate()
    answers: list[int] = []

    def scripted(_: httpx.Request) -> httpx.Response:
        code = answers.pop(0)
        return httpx.Response(code, json=KEEPALIVE_OK if code == 200 else {"detail": "x"})

    server = Server(scripted, gate)
    budget = ov.RetryBudget(ratio=0.5, capacity=2.0)
    async with client(server, budget=budget) as c:
        answers += [503, 503, 503]
        with pytest.raises(ov.OvershootUnavailable):
            await c.keepalive(KEY, SID)  # spends both tokens
        assert len(server.requests) == 3
        answers += [200, 200]
        await c.keepalive(KEY, SID)
        await c.keepalive(KEY, SID)  # two successes: one retry earned
        answers += [503, 503]
        with pytest.raises(ov.OvershootUnavailable):
            await c.keepalive(KEY, SID)
        assert len(server.requests) == 7  # 3 + 2 + (1 and one retry)
        assert answers == []


async def test_transport_errors_spend_the_budget_too() -> None:
    gate = Gate()

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset", request=request)

    server = Server(refused, gate)
    budget = ov.RetryBudget(ratio=0.5, capacity=2.0)
    async with client(server, budget=budget) as c:
        for _ in range(2):
            with pytest.raises(ov.OvershootUnavailable):
                await c.get_stream(KEY, SID)
    assert len(server.requests) == 3 + 1


Call = Callable[[ov.OvershootClient], Awaitable[object]]


@pytest.mark.parametrize(
    ("call", "answer", "endpoint", "priority"),
    [
        pytest.param(
            lambda c: c.keepalive(KEY, SID),
            (200, KEEPALIVE_OK),
            E.KEEPALIVE,
            Priority.KEEPALIVE,
            id="keepalive",
        ),
        pytest.param(
            lambda c: c.create_stream(KEY), (201, CREATED), E.CREATE, Priority.CREATE, id="create"
        ),
        pytest.param(
            lambda c: c.get_stream(KEY, SID),
            (200, {"id": SID, "state": "active"}),
            E.GET,
            Priority.GET,
            id="get",
        ),
        pytest.param(
            lambda c: c.get_stream(KEY, SID, priority=Priority.POLL),
            (200, {"id": SID, "state": "active"}),
            E.GET,
            Priority.POLL,
            id="get-as-poll",
        ),
        pytest.param(
            lambda c: c.delete_stream(KEY, SID),
            (204, None),
            E.DELETE,
            Priority.DELETE,
            id="delete",
        ),
    ],
)
async def test_the_gate_is_entered_once_per_request_with_the_endpoints_priority(
    call: Call, answer: tuple[int, object], endpoint: ov.Endpoint, priority: Priority
) -> None:
    gate = Gate()
    code, body = answer

    def ok(_: httpx.Request) -> httpx.Response:
        return httpx.Response(code) if body is None else httpx.Response(code, json=body)

    server = Server(ok, gate)
    async with client(server) as c:
        await call(c)
    assert gate.entered == [(endpoint, priority)]
    assert server.depth_seen == [1]  # the request was sent inside the gate
    assert gate.depth == 0


async def test_the_gate_is_entered_for_every_retry() -> None:
    gate = Gate()
    server = Server(busy, gate)
    async with client(server) as c:
        with pytest.raises(ov.OvershootUnavailable):
            await c.get_stream(KEY, SID, priority=Priority.POLL)
    assert gate.entered == [(E.GET, Priority.POLL)] * 3
    assert server.depth_seen == [1, 1, 1]  # each request inside its own entry


class Refused(Exception):
    pass


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c.keepalive(KEY, SID), id="keepalive"),
        pytest.param(lambda c: c.create_stream(KEY), id="create"),
        pytest.param(lambda c: c.get_stream(KEY, SID), id="get"),
        pytest.param(lambda c: c.delete_stream(KEY, SID), id="delete"),
    ],
)
async def test_an_exception_from_the_gate_propagates_and_nothing_is_sent(call: Call) -> None:
    gate = Gate()
    gate.refuse = Refused("not the leader")
    server = Server(busy, gate)
    outcomes: list[tuple[ov.Endpoint, str]] = []
    async with client(server, outcomes=outcomes) as c:
        with pytest.raises(Refused, match="not the leader"):
            await call(c)
    assert server.requests == []
    assert outcomes == []


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        pytest.param([200], ["ok"], id="ok"),
        pytest.param([503, 200], ["503", "ok"], id="retry-then-ok"),
        pytest.param([503, 502, 504], ["503", "502", "504"], id="all-unavailable"),
        pytest.param([404], ["404"], id="not-found"),
        pytest.param([429], ["429"], id="rate-limited-not-retried"),
        pytest.param([500], ["500"], id="500-not-retried"),
    ],
)
async def test_observe_gets_one_outcome_per_request(codes: list[int], expected: list[str]) -> None:
    gate = Gate()
    pending = list(codes)

    def scripted(_: httpx.Request) -> httpx.Response:
        code = pending.pop(0)
        return httpx.Response(code, json=KEEPALIVE_OK if code == 200 else {"detail": "x"})

    server = Server(scripted, gate)
    outcomes: list[tuple[ov.Endpoint, str]] = []
    async with client(server, outcomes=outcomes) as c:
        with contextlib.suppress(ov.OvershootError):
            await c.keepalive(KEY, SID)
    assert outcomes == [(E.KEEPALIVE, o) for o in expected]
    assert len(outcomes) == len(server.requests) == len(codes)


async def test_observe_names_the_error_class_of_a_transport_failure() -> None:
    gate = Gate()

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    server = Server(refused, gate)
    outcomes: list[tuple[ov.Endpoint, str]] = []
    async with client(server, outcomes=outcomes) as c:
        with pytest.raises(ov.OvershootUnavailable):
            await c.create_stream(KEY)  # unsent: create retries once
    assert outcomes == [(E.CREATE, "OvershootUnavailable")] * 2
    assert len(server.requests) == 2


async def test_a_long_retry_after_is_not_waited_out_inside_the_call() -> None:
    gate = Gate()

    def slow_down(_: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"detail": "draining"}, headers={"Retry-After": "30"})

    server = Server(slow_down, gate)
    budget = ov.RetryBudget(ratio=0.5, capacity=2.0)
    async with client(server, budget=budget) as c:
        with pytest.raises(ov.OvershootUnavailable) as info:
            await c.keepalive(KEY, SID)
    assert info.value.retry_after == 30.0
    assert len(server.requests) == 1
    assert budget.take() and budget.take()  # no token was spent on a retry not made
