"""The Event recorder: create once, aggregate repeats, bump counts sparingly, never fail."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from overshoot_operator import events as ev
from overshoot_operator.events import EventRecorder
from overshoot_operator.kube import Kube, KubeError, KubeUnavailable, NotFoundError

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
OBJ: dict[str, Any] = {
    "apiVersion": "overshoot.ai/v1alpha1",
    "kind": "OvershootStream",
    "metadata": {"namespace": "cams", "name": "lobby", "uid": "uid-1"},
}
OTHER: dict[str, Any] = {"metadata": {"namespace": "cams", "name": "porch", "uid": "uid-2"}}


class Clocks:
    def __init__(self) -> None:
        self.now = T0
        self.mono = 500.0

    def wall(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


class FakeKube:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.create_error: Exception | None = None
        self.patch_error: Exception | None = None
        self.hold_create: asyncio.Event | None = None
        # Events that expired on the API server: a patch of one answers 404.
        self.deleted: set[str] = set()

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> str:
        if self.hold_create is not None:
            await self.hold_create.wait()
        if self.create_error is not None:
            raise self.create_error
        assert namespace == body["metadata"]["namespace"]
        self.created.append(dict(body))
        return f"{body['metadata']['generateName']}{len(self.created):04d}"

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        if name in self.deleted:
            raise NotFoundError(f"Patch Event {namespace}/{name} failed: 404", status=404)
        if self.patch_error is not None:
            raise self.patch_error
        self.patches.append((namespace, name, dict(patch)))


def recorder(kube: FakeKube, clocks: Clocks) -> EventRecorder:
    return EventRecorder(cast(Kube, kube), clock=clocks.wall, monotonic=clocks.monotonic)


async def settle(rec: EventRecorder) -> None:
    """Wait for every background post (and any it starts) to finish."""
    while rec._tasks:
        await asyncio.wait_for(asyncio.gather(*list(rec._tasks)), 5)


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_the_first_event_is_created_with_count_one() -> None:
    kube, clocks = FakeKube(), Clocks()
    rec = recorder(kube, clocks)
    rec.warning(OBJ, "SecretNotFound", "the Secret is missing")
    assert kube.created == []  # posted in the background: the caller never waits
    await settle(rec)
    [body] = kube.created
    assert body == {
        "metadata": {"generateName": "lobby.", "namespace": "cams"},
        "involvedObject": {
            "apiVersion": "overshoot.ai/v1alpha1",
            "kind": "OvershootStream",
            "name": "lobby",
            "namespace": "cams",
            "uid": "uid-1",
        },
        "type": "Warning",
        "reason": "SecretNotFound",
        "message": "the Secret is missing",
        "source": {"component": ev.COMPONENT},
        "reportingComponent": ev.COMPONENT,
        "firstTimestamp": stamp(T0),
        "lastTimestamp": stamp(T0),
        "count": 1,
    }
    assert kube.patches == []


async def test_normal_and_defaults_of_the_involved_object() -> None:
    kube, clocks = FakeKube(), Clocks()
    rec = recorder(kube, clocks)
    rec.normal(OTHER, "StreamCreated", "created")
    await settle(rec)
    [body] = kube.created
    assert body["type"] == "Normal"
    assert body["involvedObject"]["kind"] == "OvershootStream"
    assert body["involvedObject"]["apiVersion"] == "overshoot.ai/v1alpha1"


async def test_repeats_are_folded_into_sparse_patches() -> None:
    kube, clocks = FakeKube(), Clocks()
    rec = recorder(kube, clocks)
    rec.warning(OBJ, "ApiKeyRejected", "401")
    await settle(rec)
    name = "lobby.0001"

    # Repeats within PATCH_EVERY_SECONDS of the create: counted, not sent.
    for _ in range(3):
        clocks.advance(15.0)
        rec.warning(OBJ, "ApiKeyRejected", "401")
        await settle(rec)
    assert len(kube.created) == 1 and kube.patches == []

    # The first repeat PATCH_EVERY_SECONDS after the last send carries every repeat so far.
    clocks.advance(ev.PATCH_EVERY_SECONDS - 45.0)
    rec.warning(OBJ, "ApiKeyRejected", "401")
    await settle(rec)
    assert kube.patches == [("cams", name, {"count": 5, "lastTimestamp": stamp(clocks.now)})]

    # And the next patch waits another PATCH_EVERY_SECONDS.
    clocks.advance(ev.PATCH_EVERY_SECONDS - 1.0)
    rec.warning(OBJ, "ApiKeyRejected", "401")
    await settle(rec)
    assert len(kube.patches) == 1
    clocks.advance(1.0)
    rec.warning(OBJ, "ApiKeyRejected", "401")
    await settle(rec)
    assert kube.patches[-1] == ("cams", name, {"count": 7, "lastTimestamp": stamp(clocks.now)})
    assert len(kube.created) == 1


async def test_repeats_before_the_create_finished_are_sent_after_it() -> None:
    kube, clocks = FakeKube(), Clocks()
    kube.hold_create = asyncio.Event()
    rec = recorder(kube, clocks)
    rec.warning(OBJ, "RateLimited", "429")
    clocks.advance(1.0)
    rec.warning(OBJ, "RateLimited", "429")
    rec.warning(OBJ, "RateLimited", "429")
    kube.hold_create.set()
    await settle(rec)
    assert len(kube.created) == 1 and kube.created[0]["count"] == 1
    assert kube.patches == [
        ("cams", "lobby.0001", {"count": 3, "lastTimestamp": stamp(T0 + timedelta(seconds=1))})
    ]


@pytest.mark.parametrize(
    ("obj", "type_", "reason", "message"),
    [
        pytest.param(OBJ, "Warning", "ApiKeyRejected", "another message", id="message"),
        pytest.param(OBJ, "Warning", "OtherReason", "401", id="reason"),
        pytest.param(OBJ, "Normal", "ApiKeyRejected", "401", id="type"),
        pytest.param(OTHER, "Warning", "ApiKeyRejected", "401", id="object"),
    ],
)
async def test_a_different_event_is_created_not_aggregated(
    obj: dict[str, Any], type_: str, reason: str, message: str
) -> None:
    kube, clocks = FakeKube(), Clocks()
    rec = recorder(kube, clocks)
    rec.warning(OBJ, "ApiKeyRejected", "401")
    await settle(rec)
    clocks.advance(ev.PATCH_EVERY_SECONDS)
    rec.record(obj, type_, reason, message)
    await settle(rec)
    assert len(kube.created) == 2 and kube.patches == []
    assert (kube.created[1]["type"], kube.created[1]["reason"]) == (type_, reason)
    assert kube.created[1]["count"] == 1


@pytest.mark.parametrize(
    ("gap", "new_event"),
    [
        pytest.param(ev.AGGREGATE_SECONDS - 1.0, False, id="within"),
        pytest.param(ev.AGGREGATE_SECONDS, True, id="at-aggregate-seconds"),
        pytest.param(ev.AGGREGATE_SECONDS * 3, True, id="long-after"),
    ],
)
async def test_a_repeat_after_aggregate_seconds_creates_a_new_event(
    gap: float, new_event: bool
) -> None:
    kube, clocks = FakeKube(), Clocks()
    rec = recorder(kube, clocks)
    rec.warning(OBJ, "ApiKeyRejected", "401")
    await settle(rec)
    clocks.advance(gap)
    rec.warning(OBJ, "ApiKeyRejected", "401")
    await settle(rec)
    if new_event:
        assert len(kube.created) == 2 and kube.patches == []
        assert kube.created[1]["count"] == 1
        assert kube.created[1]["firstTimestamp"] == stamp(clocks.now)
    else:
        assert len(kube.created) == 1
        assert kube.patches == [
            ("cams", "lobby.0001", {"count": 2, "lastTimestamp": stamp(clocks.now)})
        ]


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(KubeUnavailable("Create Event failed: timeout"), id="kube-unavailable"),
        pytest.param(KubeError("Create Event failed: 403 Forbidden", status=403), id="403"),
        pytest.param(RuntimeError("not the leader"), id="any-exception"),
    ],
)
async def test_a_failing_create_never_raises(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    kube, clocks = FakeKube(), Clocks()
    kube.create_error = error
    rec = recorder(kube, clocks)
    rec.warning(OBJ, "SecretNotFound", "missing")  # must not raise
    await settle(rec)
    assert kube.created == []
    assert "Posting Event SecretNotFound about cams/lobby failed" in caplog.text


async def test_a_failing_patch_never_raises_and_the_next_patch_carries_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube, clocks = FakeKube(), Clocks()
    rec = recorder(kube, clocks)
    rec.warning(OBJ, "ApiKeyRejected", "401")
    await settle(rec)
    kube.patch_error = KubeUnavailable("Patch Event failed: reset")
    clocks.advance(ev.PATCH_EVERY_SECONDS)
    rec.warning(OBJ, "ApiKeyRejected", "401")
    await settle(rec)
    assert "Updating Event cams/lobby.0001 failed" in caplog.text
    kube.patch_error = None
    clocks.advance(ev.PATCH_EVERY_SECONDS)
    rec.warning(OBJ, "ApiKeyRejected", "401")
    await settle(rec)
    assert kube.patches == [
        ("cams", "lobby.0001", {"count": 3, "lastTimestamp": stamp(clocks.now)})
    ]


async def test_a_repeat_after_a_failed_create_posts_the_event() -> None:
    """A problem that keeps repeating must show up once the API server takes Events again.

    The first create failing (an API blip) must not hide the Event for as long as the
    problem keeps repeating: each repeat slides the aggregation window, so without a
    retry of the create no Event would ever be posted.
    """
    kube, clocks = FakeKube(), Clocks()
    kube.create_error = KubeUnavailable("Create Event failed: timeout")
    rec = recorder(kube, clocks)
    rec.warning(OBJ, "ApiKeyRejected", "401")
    await settle(rec)
    kube.create_error = None
    for _ in range(int(ev.AGGREGATE_SECONDS // 60) * 2):  # 20 minutes of a retry every minute
        clocks.advance(60.0)
        rec.warning(OBJ, "ApiKeyRejected", "401")
        await settle(rec)
    assert len(kube.created) == 1


async def test_a_repeat_after_the_event_was_deleted_posts_a_new_one() -> None:
    """Events expire (the API server's event TTL, an hour by default): a bump answered 404
    means the Event is gone, and a problem still repeating needs a new one."""
    kube, clocks = FakeKube(), Clocks()
    rec = recorder(kube, clocks)
    rec.warning(OBJ, "ApiKeyRejected", "401")
    await settle(rec)
    # The first Event expires; the one created after it does not.
    kube.deleted = {"lobby.0001"}
    for _ in range(int(ev.AGGREGATE_SECONDS // 60) * 2):
        clocks.advance(60.0)
        rec.warning(OBJ, "ApiKeyRejected", "401")
        await settle(rec)
    assert len(kube.created) == 2


async def test_messages_are_capped_at_one_kib() -> None:
    kube, clocks = FakeKube(), Clocks()
    rec = recorder(kube, clocks)
    long = "x" * 5000
    rec.warning(OBJ, "Long", long)
    await settle(rec)
    assert kube.created[0]["message"] == "x" * ev.MAX_MESSAGE
    assert ev.MAX_MESSAGE == 1024
    # Messages equal in their first KiB are the same Event.
    rec.warning(OBJ, "Long", long + "tail")
    await settle(rec)
    assert len(kube.created) == 1


async def test_forget_drops_the_aggregation_of_one_object() -> None:
    kube, clocks = FakeKube(), Clocks()
    rec = recorder(kube, clocks)
    rec.warning(OBJ, "R", "m")
    rec.warning(OTHER, "R", "m")
    await settle(rec)
    rec.forget("uid-1")
    clocks.advance(1.0)
    rec.warning(OBJ, "R", "m")
    rec.warning(OTHER, "R", "m")
    await settle(rec)
    assert [b["involvedObject"]["uid"] for b in kube.created] == ["uid-1", "uid-2", "uid-1"]
    rec.forget("unknown-uid")  # nothing to drop


async def test_stop_cancels_posts_in_flight() -> None:
    kube, clocks = FakeKube(), Clocks()
    kube.hold_create = asyncio.Event()  # never set: the post hangs
    rec = recorder(kube, clocks)
    rec.warning(OBJ, "R", "m")
    await asyncio.sleep(0)
    assert len(rec._tasks) == 1
    await asyncio.wait_for(rec.stop(), 5)
    assert rec._tasks == set()
    assert kube.created == []
