"""Keepalive timing rules (invariant 4), the due-queue and the call limiter.

The asyncio tests run on the real loop clock at a tenth-of-a-second scale. (looptime was
tried and dropped: its pytest plugin leaks an event loop from every synchronous test under
pytest-asyncio 1.x, which `filterwarnings = error` rightly turns into failures.) Timing
assertions are lower bounds that a slow machine cannot break: a limiter can be slower
than its rate, never faster.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from overshoot_operator import schedule as sch
from overshoot_operator.limiter import CallLimiter, Priority

pytestmark = pytest.mark.unit


def test_happy_path_respects_interval_and_margin() -> None:
    rng = random.Random(1)
    for _ in range(200):
        d = sch.next_keepalive_delay(seconds_to_expiry=300, interval=120, jitter=0.1, rng=rng)
        assert 108 <= d <= 132
    # A long interval is clipped to leave the safety margin before expiry.
    d = sch.next_keepalive_delay(seconds_to_expiry=300, interval=280, jitter=0, rng=rng)
    assert d == 300 - sch.SAFETY_MARGIN_SECONDS


def test_retries_get_faster_as_deadline_nears_and_are_floored() -> None:
    rng = random.Random(2)
    delays = [
        sch.retry_keepalive_delay(seconds_to_expiry=t, interval=120, rng=random.Random(0))
        for t in (200, 100, 40, 12, 3)
    ]
    assert delays == sorted(delays, reverse=True)
    assert min(delays) >= sch.MIN_RETRY_SECONDS * 0.9
    # Past expiry there is no deadline to race: back to the interval, never a hot loop.
    assert sch.retry_keepalive_delay(seconds_to_expiry=-5, interval=120, rng=rng) >= 108


def test_retry_after_is_honoured_but_cannot_lose_the_lease() -> None:
    rng = random.Random(0)
    d = sch.retry_keepalive_delay(seconds_to_expiry=200, interval=120, retry_after=150, rng=rng)
    assert d >= 150 * 0.9
    d = sch.retry_keepalive_delay(seconds_to_expiry=30, interval=120, retry_after=600, rng=rng)
    assert d <= 29 * 1.1


def test_error_path_calls_fewer_times_than_a_tight_loop_over_a_lease() -> None:
    """Over one lease of failures, attempts stay a handful (log of the lease)."""
    left, attempts = 300.0, 0
    while left > 0:
        left -= sch.retry_keepalive_delay(seconds_to_expiry=left, interval=120)
        attempts += 1
    assert attempts <= 12


def test_backoff_grows_caps_and_honours_retry_after() -> None:
    rng = random.Random(3)
    ceilings = [sch.backoff_delay(a, base=2, cap=60, rng=rng) for a in range(1, 12)]
    assert all(d <= 60 for d in ceilings)
    assert ceilings[-1] >= 30
    assert sch.backoff_delay(1, retry_after=42, rng=rng) >= 42


async def test_due_queue_fires_in_order_and_reschedule_replaces() -> None:
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []
    three = asyncio.Event()

    def on_due(key: str) -> None:
        fired.append((key, loop.time()))
        if len(fired) == 3:
            three.set()

    queue: sch.DueQueue[str] = sch.DueQueue(on_due, name="test")
    queue.start()
    start = loop.time()
    queue.schedule("b", 0.2)
    queue.schedule("a", 0.1)
    queue.schedule("c", 0.05)
    queue.schedule("c", 0.3)  # replaces 0.05
    queue.schedule("d", 0.15)
    queue.cancel("d")
    # "c" is due last, so "d" (due at 0.15) would have fired before it.
    await asyncio.wait_for(three.wait(), 5)
    await queue.stop()
    assert [k for k, _ in fired] == ["a", "b", "c"]
    assert [t - start >= due for (_, t), due in zip(fired, (0.1, 0.2, 0.3), strict=True)] == [
        True
    ] * 3


def recording_calls(
    limiter: CallLimiter, order: list[str], *, hold: float
) -> Callable[[str, Priority], Awaitable[None]]:
    """A call through `limiter` that records its name in `order` when it gets its slot."""

    async def call(name: str, priority: Priority) -> None:
        async with limiter.slot(priority):
            order.append(name)
            await asyncio.sleep(hold)

    return call


async def test_limiter_serves_keepalives_before_creates_and_bounds_rate() -> None:
    loop = asyncio.get_running_loop()
    limiter = CallLimiter(concurrency=2, per_second=1000)
    order: list[str] = []
    call = recording_calls(limiter, order, hold=0.01)
    start = loop.time()
    creates = [asyncio.create_task(call(f"create{i}", Priority.CREATE)) for i in range(30)]
    await asyncio.sleep(0)
    keepalives = [asyncio.create_task(call(f"ka{i}", Priority.KEEPALIVE)) for i in range(3)]
    await asyncio.gather(*creates, *keepalives)
    # The first two slots went to creates already waiting; every keepalive came next.
    assert [n[:2] for n in order[2:5]] == ["ka"] * 3
    assert limiter.in_flight == 0
    # 33 calls at concurrency 2 holding 10 ms each cannot finish in under 160 ms.
    assert loop.time() - start >= 0.16


async def test_limiter_serves_creates_before_a_backlog_of_status_polls() -> None:
    limiter = CallLimiter(concurrency=1, per_second=1000)
    order: list[str] = []
    call = recording_calls(limiter, order, hold=0.001)
    polls = [asyncio.create_task(call(f"poll{i}", Priority.POLL)) for i in range(20)]
    await asyncio.sleep(0)
    creates = [asyncio.create_task(call(f"create{i}", Priority.CREATE)) for i in range(3)]
    await asyncio.gather(*polls, *creates)
    # One poll already held the only slot; the creates overtook the other nineteen.
    assert order[1:4] == ["create0", "create1", "create2"]
    assert len(order) == 23


async def test_limiter_rate_limits_short_calls() -> None:
    loop = asyncio.get_running_loop()
    limiter = CallLimiter(concurrency=100, per_second=50)
    assert limiter.in_flight == 0
    start = loop.time()

    async def call() -> None:
        async with limiter.slot(Priority.GET):
            pass

    await asyncio.gather(*(call() for _ in range(75)))
    # A burst of one second's worth (50), then 50 per second: the other 25 need 0.5 s.
    assert loop.time() - start >= 0.5 - 1e-3


@pytest.mark.parametrize(
    ("failures", "retry_after", "kw", "low", "high"),
    [
        pytest.param(1, None, {}, 7.5, 15.0, id="first-failure-from-base"),
        pytest.param(0, None, {}, 7.5, 15.0, id="zero-counts-as-first"),
        pytest.param(2, None, {}, 15.0, 30.0, id="doubles"),
        pytest.param(3, None, {}, 30.0, 60.0, id="doubles-again"),
        pytest.param(5, None, {}, 120.0, 240.0, id="fifth"),
        pytest.param(6, None, {}, 150.0, 300.0, id="capped"),
        pytest.param(60, None, {}, 150.0, 300.0, id="capped-for-ever"),
        # A per-key stream cap answers 429 with Retry-After: 1; no stream ends that soon.
        pytest.param(1, 1.0, {}, 7.5, 15.0, id="short-retry-after-is-no-hurry"),
        pytest.param(1, 120.0, {}, 120.0, 120.0, id="long-retry-after-honoured"),
        pytest.param(6, 1000.0, {}, 1000.0, 1000.0, id="retry-after-beyond-cap-honoured"),
        pytest.param(3, None, {"base": 2.0, "cap": 5.0}, 2.5, 5.0, id="own-base-and-cap"),
    ],
)
def test_create_retry_delay(
    failures: int, retry_after: float | None, kw: dict[str, float], low: float, high: float
) -> None:
    delays = [
        sch.create_retry_delay(failures, retry_after=retry_after, rng=random.Random(seed), **kw)
        for seed in range(100)
    ]
    assert all(low <= d <= high for d in delays), (min(delays), max(delays))
    if low < high:
        # Full jitter: resources that failed together do not retry together.
        assert len(set(delays)) > 50
        assert min(delays) < low + (high - low) * 0.2 and max(delays) > high - (high - low) * 0.2


def test_create_retry_delay_never_shrinks_as_failures_grow() -> None:
    ceilings = [
        max(sch.create_retry_delay(n, rng=random.Random(seed)) for seed in range(50))
        for n in range(1, 10)
    ]
    assert ceilings == sorted(ceilings)
    assert ceilings[0] <= 15.0 and ceilings[-1] <= 300.0
    # Without an rng it still answers within the bounds.
    assert 7.5 <= sch.create_retry_delay(1) <= 15.0
