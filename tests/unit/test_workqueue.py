"""The work queue: one task per key at a time, coalesced adds, one timer per key.

Passes are held open with asyncio Events, so "while a pass runs" is a fact, not a race;
every wait is for a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from overshoot_operator.workqueue import WorkQueue

pytestmark = pytest.mark.unit

DEADLINE = 5.0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for `condition`, failing after DEADLINE. The state lives in the code under
    test (a role, a queue's length), which offers no event to wait on: poll it."""

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.002)

    try:
        await asyncio.wait_for(poll(), DEADLINE)
    except TimeoutError:
        pytest.fail(f"timed out waiting for: {what}")


class Worker:
    """A `process` that records passes and can hold each one open until released."""

    def __init__(self, *, hold: bool = False) -> None:
        self.passes: list[str] = []
        self.active: dict[str, int] = {}
        self.most_at_once: dict[str, int] = {}
        self.hold = hold
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.fail: set[str] = set()
        self.cancelled: list[str] = []

    async def __call__(self, key: str) -> None:
        self.active[key] = self.active.get(key, 0) + 1
        self.most_at_once[key] = max(self.most_at_once.get(key, 0), self.active[key])
        self.passes.append(key)
        self.started.set()
        try:
            if self.hold:
                await self.release.wait()
            else:
                await asyncio.sleep(0)
            if key in self.fail:
                raise RuntimeError(f"bug while processing {key}")
        except asyncio.CancelledError:
            self.cancelled.append(key)
            raise
        finally:
            self.active[key] -= 1

    def count(self, key: str) -> int:
        return self.passes.count(key)


@pytest.mark.parametrize("adds", [pytest.param(1, id="one-add"), pytest.param(25, id="many-adds")])
async def test_adds_while_processing_make_exactly_one_more_pass(adds: int) -> None:
    worker = Worker(hold=True)
    queue: WorkQueue[str] = WorkQueue(worker, name="test")
    queue.start()
    try:
        queue.add("a")
        await asyncio.wait_for(worker.started.wait(), DEADLINE)
        assert len(queue) == 1
        for _ in range(adds):
            queue.add("a")
        # Give the loop many turns: no second task may start for the key.
        for _ in range(20):
            await asyncio.sleep(0)
        assert worker.count("a") == 1
        worker.release.set()
        await until(lambda: len(queue) == 0, "the key to go idle")
        assert worker.count("a") == 2
        assert worker.most_at_once["a"] == 1
    finally:
        await queue.stop()


async def test_adds_while_idle_after_a_pass_start_a_new_pass() -> None:
    worker = Worker()
    queue: WorkQueue[str] = WorkQueue(worker, name="test")
    queue.start()
    try:
        queue.add("a")
        await until(lambda: len(queue) == 0, "the first pass")
        queue.add("a")
        await until(lambda: len(queue) == 0 and worker.count("a") == 2, "the second pass")
        assert worker.count("a") == 2
    finally:
        await queue.stop()


async def test_adds_before_the_task_runs_are_coalesced() -> None:
    worker = Worker()
    queue: WorkQueue[str] = WorkQueue(worker, name="test")
    queue.start()
    try:
        for _ in range(10):
            queue.add("a")  # all before the pass began: it starts after them, so it covers them
        await until(lambda: len(queue) == 0, "the key to go idle")
        assert worker.count("a") == 1
        assert worker.most_at_once["a"] == 1
    finally:
        await queue.stop()


async def test_an_add_during_a_pass_from_within_the_pass_runs_once_more() -> None:
    passes: list[str] = []
    queue: WorkQueue[str]

    async def process(key: str) -> None:
        passes.append(key)
        if len(passes) == 1:
            queue.add(key)  # e.g. a watch event the pass itself caused

    queue = WorkQueue(process, name="test")
    queue.start()
    try:
        queue.add("a")
        await until(lambda: len(queue) == 0 and len(passes) >= 2, "the second pass")
        assert passes == ["a", "a"]
    finally:
        await queue.stop()


async def test_different_keys_run_at_the_same_time() -> None:
    worker = Worker(hold=True)
    queue: WorkQueue[str] = WorkQueue(worker, name="test")
    queue.start()
    try:
        for key in ("a", "b", "c"):
            queue.add(key)
        await until(lambda: len(worker.passes) == 3, "three keys processing")
        assert len(queue) == 3
        assert sum(worker.active.values()) == 3
        worker.release.set()
        await until(lambda: len(queue) == 0, "all keys idle")
    finally:
        await queue.stop()


async def test_add_after_replaces_an_earlier_time() -> None:
    worker = Worker()
    queue: WorkQueue[str] = WorkQueue(worker, name="test")
    queue.start()
    loop = asyncio.get_running_loop()
    try:
        before = loop.time()
        queue.add_after("a", 100.0)
        due = queue.due_at("a")
        assert due is not None and before + 100.0 <= due <= loop.time() + 100.0
        queue.add_after("a", 0.02)  # earlier: replaces
        due = queue.due_at("a")
        assert due is not None and due <= loop.time() + 0.02
        assert queue.scheduled == 1
        queue.add_after("b", 0.02)
        queue.add_after("b", 100.0)  # later: replaces too
        due_b = queue.due_at("b")
        assert due_b is not None and due_b >= before + 100.0
        await until(lambda: worker.count("a") == 1 and len(queue) == 0, "the timer of a")
        assert queue.due_at("a") is None
        assert queue.scheduled == 1 and worker.count("b") == 0
    finally:
        await queue.stop()


async def test_add_after_without_delay_adds_now() -> None:
    worker = Worker()
    queue: WorkQueue[str] = WorkQueue(worker, name="test")  # not started: no timer task
    try:
        queue.add_after("a", 0)
        assert len(queue) == 1 and queue.scheduled == 0
        await until(lambda: len(queue) == 0, "the pass")
        assert worker.passes == ["a"]
    finally:
        await queue.stop()


async def test_forget_cancels_the_timer() -> None:
    worker = Worker()
    queue: WorkQueue[str] = WorkQueue(worker, name="test")
    queue.start()
    try:
        queue.add_after("a", 0.01)
        queue.add_after("b", 0.05)  # the witness: due after "a" would have been
        queue.forget("a")
        assert queue.due_at("a") is None and queue.scheduled == 1
        await until(lambda: worker.count("b") == 1 and len(queue) == 0, "the witness b")
        assert worker.count("a") == 0
    finally:
        await queue.stop()


async def test_forget_during_a_pass_drops_a_pending_repeat() -> None:
    worker = Worker(hold=True)
    queue: WorkQueue[str] = WorkQueue(worker, name="test")
    queue.start()
    try:
        queue.add("a")
        await asyncio.wait_for(worker.started.wait(), DEADLINE)
        queue.add("a")
        queue.forget("a")  # the running pass finishes normally, and that is all
        worker.release.set()
        await until(lambda: len(queue) == 0, "the key to go idle")
        assert worker.count("a") == 1
    finally:
        await queue.stop()


async def test_an_error_in_process_is_logged_and_the_key_comes_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="overshoot_operator.workqueue")
    worker = Worker()
    worker.fail.add("a")
    queue: WorkQueue[str] = WorkQueue(worker, name="test")
    queue.start()
    loop = asyncio.get_running_loop()
    try:
        before = loop.time()
        queue.add("a")
        queue.add("b")
        await until(lambda: len(queue) == 0, "both passes")
        after = loop.time()
        due = queue.due_at("a")
        assert due is not None and before + 5.0 <= due <= after + 5.0
        assert queue.due_at("b") is None  # a key that did not fail is not re-queued
        [record] = [r for r in caplog.records if "Unhandled error in test" in r.getMessage()]
        assert "a" in record.getMessage()
        assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
        # The queue still works for every key, the failed one included.
        worker.fail.clear()
        queue.add("a")
        await until(lambda: worker.count("a") == 2 and len(queue) == 0, "a new pass of a")
    finally:
        await queue.stop()


async def test_stop_cancels_running_passes_and_ignores_later_adds() -> None:
    worker = Worker(hold=True)
    queue: WorkQueue[str] = WorkQueue(worker, name="test")
    queue.start()
    queue.add("a")
    queue.add("b")
    await until(lambda: len(worker.passes) == 2, "two passes running")
    queue.add("a")  # dirty: would run again if the queue went on
    queue.add_after("c", 0.01)
    await queue.stop()
    assert sorted(worker.cancelled) == ["a", "b"]
    assert len(queue) == 0
    queue.add("d")
    assert len(queue) == 0
    for _ in range(20):
        await asyncio.sleep(0)
    assert worker.passes == ["a", "b"]
