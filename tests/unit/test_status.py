"""The status: built from the registry entry (pure), and written by the one writer."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from pydantic import SecretStr

from overshoot_operator import decisions as dec
from overshoot_operator import overshoot as ov
from overshoot_operator import resource as res
from overshoot_operator.kube import (
    ConflictError,
    Kube,
    KubeError,
    KubeUnavailable,
    NotFoundError,
)
from overshoot_operator.registry import Entry, Held, Media, Observed, PodFacts
from overshoot_operator.status import StatusWriter, View, WriteResult, build_status

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
FRESH = 30.0
NS, NAME, UID = "cams", "lobby", "uid-1"
SID = "2ea5a604-d225-4cd2-82ac-b907cb0b4f63"
EXPIRES_MS = NOW_MS + 300_000
KEEPALIVE_AT = NOW - timedelta(seconds=40)


def observed(*, generation: int = 5, status: Mapping[str, Any] | None = None) -> Observed:
    body: dict[str, Any] = {
        "metadata": {
            "namespace": NS,
            "name": NAME,
            "uid": UID,
            "generation": generation,
            "resourceVersion": "100",
        },
        "spec": {},
    }
    if status is not None:
        body["status"] = dict(status)
    return Observed.from_body(body)


def held(*, last_keepalive: datetime | None = KEEPALIVE_AT) -> Held:
    return Held(
        stream_id=SID,
        uid=UID,
        api_key=SecretStr("ovs_key"),
        expires_at_ms=EXPIRES_MS,
        recorded=True,
        publish=None,
        secret_stream_id=SID,
        keepalive_at=0.0,
        last_keepalive=last_keepalive,
    )


def pod(*, ready: bool = True) -> PodFacts:
    return PodFacts(
        uid="pod-uid",
        phase="Running",
        ready=ready,
        deleting=False,
        config_hash="h",
        owner_uid=UID,
    )


def entry(
    *, holding: bool = True, with_pod: bool = True, synced: int | None = 5, **changes: Any
) -> Entry:
    e = Entry((NS, NAME))
    e.observed = observed()
    e.held = held() if holding else None
    e.pod = pod() if with_pod else None
    e.synced_generation = synced
    for name, value in changes.items():
        setattr(e, name, value)
    return e


def build(e: Entry, view: View | None = None, obs: Observed | None = None) -> dict[str, Any]:
    patch, _ = build_status(e, obs or observed(), view or View(), now=NOW, fresh_seconds=FRESH)
    return patch


def condition(patch: Mapping[str, Any], type_: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in patch["conditions"] if c["type"] == type_)
    return found


# ---- build_status -----------------------------------------------------------------------


def test_nothing_held() -> None:
    # Stale media and a Pod of a previous stream say nothing once no stream is held.
    e = entry(holding=False, media=Media(stream_id=SID, last_frame_at_ms=NOW_MS))
    patch = build(e)
    assert patch["phase"] == "Pending"
    for key in ("streamId", "secretName", "publisherPod", "expiresAt", "lastKeepaliveTime"):
        assert patch[key] is None, key
    assert "stream" in patch and patch["stream"] is None
    assert patch["recreations"] == 0
    assert condition(patch, "StreamActive")["status"] == "False"
    assert condition(patch, "Publishing")["reason"] == "NoStream"


def test_held_with_pod() -> None:
    patch = build(entry(recreations=2))
    assert patch["streamId"] == SID
    assert patch["secretName"] == res.publish_secret_name(NAME) == "lobby-publish"
    assert patch["publisherPod"] == res.publisher_pod_name(NAME) == "lobby-publisher"
    assert patch["expiresAt"] == dec.rfc3339(dec.ms_to_datetime(EXPIRES_MS))
    assert patch["expiresAt"] == "2026-03-01T12:05:00Z"
    assert patch["lastKeepaliveTime"] == "2026-03-01T11:59:20Z"
    assert patch["recreations"] == 2
    assert patch["phase"] == "Provisioning"
    assert condition(patch, "StreamActive") == {
        "type": "StreamActive",
        "status": "True",
        "reason": "LeaseHeld",
        "message": f"Stream {SID} is active",
        "lastTransitionTime": "2026-03-01T12:00:00Z",
        "observedGeneration": 5,
    }
    # Held with no poll answer yet: nothing to say about the media, and no clearing either.
    assert "stream" not in patch


def test_held_publisher_pod_only_once_the_pod_watch_saw_it() -> None:
    patch = build(entry(with_pod=False))
    assert patch["streamId"] == SID
    assert patch["publisherPod"] is None
    assert "publisher Pod not ready yet" in condition(patch, "Publishing")["message"]


def test_held_with_media() -> None:
    state = ov.StreamState(
        id=SID,
        state="active",
        last_frame_index=41,
        last_frame_at_ms=NOW_MS - 2_000,
        first_frame_at_ms=NOW_MS - 60_000,
        recent_fps=29.5,
        stream_time_ms=60_000,
    )
    e = entry(
        media=Media(
            stream_id=SID, state=state, last_frame_at_ms=NOW_MS - 2_000, ever_had_frames=True
        )
    )
    patch = build(e)
    assert patch["phase"] == "Publishing"
    assert patch["stream"] == {
        "recentFps": 29.5,
        "lastFrameIndex": 41,
        "lastFrameAt": "2026-03-01T11:59:58Z",
        "firstFrameAt": "2026-03-01T11:59:00Z",
        "streamTimeMs": 60_000,
        "endReason": None,
    }


@pytest.mark.parametrize(
    ("view", "holding", "phase", "reason"),
    [
        pytest.param(View(suspended=True), False, "Suspended", "Suspended", id="suspended"),
        pytest.param(
            View(suspended=True), True, "Suspended", "Suspended", id="suspended-still-holding"
        ),
        pytest.param(
            View(invalid="spec.source: exactly one of rtsp, http"),
            False,
            "Failed",
            "InvalidSpec",
            id="invalid",
        ),
        pytest.param(View(deleting=True), True, "Deleting", "LeaseHeld", id="deleting-held"),
        pytest.param(View(deleting=True), False, "Deleting", "Creating", id="deleting-nothing"),
    ],
)
def test_views(view: View, holding: bool, phase: str, reason: str) -> None:
    patch = build(entry(holding=holding), view)
    assert patch["phase"] == phase
    assert condition(patch, "StreamActive")["reason"] == reason
    if view.invalid:
        assert condition(patch, "Ready")["message"] == view.invalid


def test_fail_end() -> None:
    e = entry(
        holding=False,
        failed=("RemoteEnded", "the remote stream ended (expired); onRemoteEnd is Fail", 5),
        failed_end_reason="expired",
    )
    patch = build(e)
    assert patch["phase"] == "Failed"
    assert patch["stream"] == {"endReason": "expired"}
    ready = condition(patch, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RemoteEnded")
    assert "onRemoteEnd is Fail" in ready["message"]


def test_invalid_spec_wins_over_a_fail_end() -> None:
    e = entry(holding=False, failed=("RemoteEnded", "ended", 4), failed_end_reason="expired")
    patch = build(e, View(invalid="bad spec"))
    assert patch["phase"] == "Failed"
    assert condition(patch, "Ready")["reason"] == "InvalidSpec"


@pytest.mark.parametrize(
    ("holding", "synced", "stored", "view", "expected"),
    [
        pytest.param(False, None, None, View(), 5, id="nothing-held"),
        pytest.param(False, 3, 2, View(), 5, id="nothing-held-ignores-synced-and-stored"),
        pytest.param(True, 5, 4, View(), 5, id="held-pod-synced-for-current"),
        pytest.param(True, 3, 4, View(), 3, id="held-spec-changed-pod-not-yet-replaced"),
        pytest.param(True, None, 4, View(), 4, id="held-resumed-keeps-stored"),
        pytest.param(True, None, None, View(), 5, id="held-resumed-nothing-stored"),
        pytest.param(True, None, "4", View(), 5, id="held-resumed-stored-not-an-int"),
        pytest.param(True, 3, 4, View(suspended=True), 5, id="suspended"),
        pytest.param(True, 3, 4, View(invalid="bad"), 5, id="invalid"),
    ],
)
def test_observed_generation(
    holding: bool, synced: int | None, stored: object, view: View, expected: int
) -> None:
    status = {} if stored is None else {"observedGeneration": stored}
    e = entry(holding=holding, synced=synced)
    patch, conditions = build_status(
        e, observed(generation=5, status=status), view, now=NOW, fresh_seconds=FRESH
    )
    assert patch["observedGeneration"] == expected
    assert {c.observed_generation for c in conditions} == {expected}


@pytest.mark.parametrize(
    ("holding", "last_keepalive", "stored", "expected"),
    [
        pytest.param(True, KEEPALIVE_AT, "2020-01-01T00:00:00Z", "2026-03-01T11:59:20Z", id="ours"),
        pytest.param(
            True, None, "2026-03-01T11:58:00Z", "2026-03-01T11:58:00Z", id="resumed-keeps-stored"
        ),
        pytest.param(True, None, None, None, id="resumed-nothing-stored"),
        pytest.param(False, None, "2026-03-01T11:58:00Z", None, id="not-held"),
    ],
)
def test_last_keepalive_time(
    holding: bool, last_keepalive: datetime | None, stored: str | None, expected: str | None
) -> None:
    e = entry(holding=holding)
    if e.held is not None:
        e.held.last_keepalive = last_keepalive
    status = {} if stored is None else {"lastKeepaliveTime": stored}
    assert build(e, obs=observed(status=status))["lastKeepaliveTime"] == expected


def test_conditions_carry_over_from_the_entry() -> None:
    e = entry()
    _, first = build_status(e, observed(), View(), now=NOW, fresh_seconds=FRESH)
    e.conditions = first
    later = NOW + timedelta(minutes=5)
    patch, _ = build_status(e, observed(), View(), now=later, fresh_seconds=FRESH)
    assert {c["lastTransitionTime"] for c in patch["conditions"]} == {"2026-03-01T12:00:00Z"}


# ---- StatusWriter -----------------------------------------------------------------------


class FakeKube:
    """Only what the status writer calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any], str]] = []
        self.error: Exception | None = None

    async def replace_stream_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, uid: str
    ) -> dict[str, Any]:
        self.calls.append((namespace, name, dict(status), uid))
        if self.error is not None:
            raise self.error
        return {"status": dict(status)}


def writer(kube: FakeKube) -> StatusWriter:
    return StatusWriter(cast(Kube, kube), fresh_seconds=FRESH)


def nulls_in(value: Any, path: str = "status") -> list[str]:
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in nulls_in(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in nulls_in(v, f"{path}[{i}]")]
    return [path] if value is None else []


async def test_write_sends_no_nulls_and_records_what_it_wrote() -> None:
    kube = FakeKube()
    e = entry(holding=False)
    result = await writer(kube).write(e, observed(), View(), now=NOW)
    assert result is WriteResult.WRITTEN
    [(namespace, name, sent, uid)] = kube.calls
    assert (namespace, name, uid) == (NS, NAME, UID)
    assert nulls_in(sent) == []
    assert "stream" not in sent and "streamId" not in sent and "publisherPod" not in sent
    assert sent["phase"] == "Pending" and sent["observedGeneration"] == 5
    assert e.phase == "Pending"
    assert e.status_digest is not None
    assert [c.type for c in e.conditions] == ["StreamActive", "Publishing", "Ready"]


async def test_write_of_a_held_stream_without_nulls_in_nested_values() -> None:
    kube = FakeKube()
    state = ov.StreamState(id=SID, state="active", last_frame_index=3)  # most fields None
    e = entry(media=Media(stream_id=SID, state=state))
    assert await writer(kube).write(e, observed(), View(), now=NOW) is WriteResult.WRITTEN
    sent = kube.calls[0][2]
    assert nulls_in(sent) == []
    assert sent["stream"] == {"lastFrameIndex": 3}
    assert sent["streamId"] == SID and sent["publisherPod"] == "lobby-publisher"


async def test_identical_writes_are_skipped() -> None:
    kube = FakeKube()
    w = writer(kube)
    e = entry()
    assert await w.write(e, observed(), View(), now=NOW) is WriteResult.WRITTEN
    # Later, with nothing learned: the same status (transition times do not move).
    later = NOW + timedelta(minutes=1)
    assert await w.write(e, observed(), View(), now=later) is WriteResult.UNCHANGED
    assert len(kube.calls) == 1
    # Something changed: written again.
    e.recreations = 1
    assert await w.write(e, observed(), View(), now=later) is WriteResult.WRITTEN
    assert len(kube.calls) == 2


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(NotFoundError("gone", status=404), WriteResult.GONE, id="404"),
        pytest.param(ConflictError("conflict", status=409), WriteResult.GONE, id="409"),
        pytest.param(KubeError("test failed", status=422), WriteResult.GONE, id="422-uid-test"),
        pytest.param(KubeError("forbidden", status=403), WriteResult.FAILED, id="403"),
        pytest.param(KubeUnavailable("timeout"), WriteResult.FAILED, id="unavailable"),
        pytest.param(KubeUnavailable("busy", status=503), WriteResult.FAILED, id="503"),
    ],
)
async def test_write_errors(error: KubeError, expected: WriteResult) -> None:
    kube = FakeKube()
    kube.error = error
    w = writer(kube)
    e = entry()
    assert await w.write(e, observed(), View(), now=NOW) is expected
    # Nothing is recorded as written: the next pass tries again.
    assert e.status_digest is None and e.conditions == [] and e.phase is None
    kube.error = None
    assert await w.write(e, observed(), View(), now=NOW) is WriteResult.WRITTEN
    assert len(kube.calls) == 2
