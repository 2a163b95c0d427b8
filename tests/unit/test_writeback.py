"""WriteBack: coalesced per-key background writes (no servers)."""

from __future__ import annotations

import asyncio

import pytest

from overshoot_operator.writeback import WriteBack

pytestmark = pytest.mark.unit


async def settle(wb: WriteBack[str]) -> None:
    for _ in range(50):
        await asyncio.sleep(0.005)
        if not len(wb):
            await asyncio.sleep(0.005)
            return


async def test_marks_of_a_queued_key_fold_into_one_write_in_mark_order() -> None:
    written: list[str] = []

    async def write(key: str) -> None:
        written.append(key)

    wb: WriteBack[str] = WriteBack(write, workers=1, name="t")
    for key in ["a", "b", "a", "c", "b", "a"]:
        wb.mark(key)
    assert len(wb) == 3
    wb.start()
    await settle(wb)
    await wb.stop()
    assert written == ["a", "b", "c"]


async def test_a_mark_during_the_write_causes_exactly_one_more() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    written: list[str] = []

    async def write(key: str) -> None:
        written.append(key)
        if len(written) == 1:
            started.set()
            await release.wait()

    wb: WriteBack[str] = WriteBack(write, workers=4, name="t")
    wb.start()
    wb.mark("a")
    await started.wait()
    for _ in range(5):
        wb.mark("a")  # while "a" is being written: must not run a second write alongside
    await asyncio.sleep(0.02)
    assert written == ["a"]
    release.set()
    await settle(wb)
    await wb.stop()
    assert written == ["a", "a"]


async def test_a_failing_write_does_not_stop_the_others_and_discard_drops_a_mark() -> None:
    written: list[str] = []

    async def write(key: str) -> None:
        if key == "bad":
            raise RuntimeError("boom")
        written.append(key)

    wb: WriteBack[str] = WriteBack(write, workers=1, name="t")
    for key in ["bad", "gone", "ok"]:
        wb.mark(key)
    wb.discard("gone")
    wb.start()
    await settle(wb)
    wb.mark("later")
    await settle(wb)
    await wb.stop()
    assert written == ["ok", "later"]
