"""The registry: what the watches say, what asks for work, and forgetting."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from overshoot_operator import decisions as dec
from overshoot_operator import overshoot as ov
from overshoot_operator import resource as res
from overshoot_operator.delivery import Decision
from overshoot_operator.registry import (
    TOMBSTONE_SECONDS,
    DesiredPod,
    Entry,
    Fetched,
    Held,
    Media,
    Observed,
    PodFacts,
    Registry,
    container_failure,
)

pytestmark = pytest.mark.unit

KEY = ("cams", "lobby")
HASH = res.PUBLISHER_CONFIG_HASH_ANNOTATION


def body(**meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "namespace": "cams",
        "name": "lobby",
        "uid": "uid-1",
        "generation": 2,
        "resourceVersion": "41",
    }
    metadata.update(meta)
    return {"metadata": metadata, "spec": {"suspend": False}, "status": {"phase": "Pending"}}


# ---- Observed.from_body ------------------------------------------------------------------


def test_from_body_reads_everything_the_controller_needs() -> None:
    raw = body(
        deletionTimestamp="2026-03-01T12:00:00Z",
        finalizers=["other/keep", res.FINALIZER],
        annotations={
            res.STREAM_ID_ANNOTATION: "sid-1",
            res.CREATING_ANNOTATION: "2026-03-01T11:00:00Z",
            res.REFRESH_ANNOTATION: "7",
            "unrelated": "x",
        },
    )
    o = Observed.from_body(raw)
    assert (o.namespace, o.name, o.uid, o.generation, o.resource_version) == (
        "cams",
        "lobby",
        "uid-1",
        2,
        "41",
    )
    assert o.key == KEY
    assert o.deletion_started == datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert o.deleting
    assert o.finalizers == ("other/keep", res.FINALIZER) and o.has_finalizer
    assert o.stream_id_annotation == "sid-1"
    assert o.creating_annotation == "2026-03-01T11:00:00Z"
    assert o.refresh_annotation == "7"
    assert o.spec == {"suspend": False}
    assert o.status == {"phase": "Pending"}
    assert o.owner == "OvershootStream cams/lobby"
    assert o.ref() == {
        "apiVersion": res.API_VERSION,
        "kind": res.KIND,
        "metadata": {"namespace": "cams", "name": "lobby", "uid": "uid-1"},
    }
    # The spec is a copy: changing the body later does not change what was observed.
    raw["spec"]["suspend"] = True
    assert o.spec == {"suspend": False}


@pytest.mark.parametrize(
    ("raw", "checks"),
    [
        pytest.param(
            {},
            {
                "namespace": "",
                "name": "",
                "uid": "",
                "generation": 0,
                "resource_version": "",
                "deletion_started": None,
                "finalizers": (),
                "spec": {},
                "status": {},
                "stream_id_annotation": None,
            },
            id="empty-body",
        ),
        pytest.param(
            {"metadata": None, "spec": None, "status": None},
            {"namespace": "", "generation": 0, "spec": {}, "status": {}},
            id="nulls",
        ),
        pytest.param(
            {"metadata": {"annotations": None, "finalizers": None, "generation": None}},
            {"stream_id_annotation": None, "finalizers": (), "generation": 0},
            id="null-metadata-fields",
        ),
        pytest.param({"status": "garbage"}, {"status": {}}, id="status-a-string"),
        pytest.param({"status": ["a", "b"]}, {"status": {}}, id="status-a-list"),
        pytest.param({"status": 5}, {"status": {}}, id="status-a-number"),
        pytest.param(
            {"metadata": {"generation": "3", "resourceVersion": 12}},
            {"generation": 3, "resource_version": "12"},
            id="loose-types",
        ),
        pytest.param(
            {"metadata": {"deletionTimestamp": ""}},
            {"deletion_started": None},
            id="empty-deletion-timestamp",
        ),
        pytest.param(
            {"metadata": {"finalizers": ["x/y"]}},
            {"finalizers": ("x/y",)},
            id="finalizers-without-ours",
        ),
    ],
)
def test_from_body_tolerates_absent_and_malformed(
    raw: dict[str, Any], checks: dict[str, Any]
) -> None:
    o = Observed.from_body(raw)
    for attr, expected in checks.items():
        assert getattr(o, attr) == expected, attr
    assert not o.has_finalizer


def test_a_timestamp_with_offset_is_parsed() -> None:
    o = Observed.from_body(body(deletionTimestamp="2026-03-01T13:00:00+01:00"))
    assert o.deletion_started == datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


# ---- observe -----------------------------------------------------------------------------

BASE = Observed.from_body(body(finalizers=[res.FINALIZER]))


@pytest.mark.parametrize(
    ("changed", "asks"),
    [
        pytest.param(replace(BASE), False, id="identical"),
        pytest.param(replace(BASE, resource_version="42"), False, id="resource-version-only"),
        pytest.param(
            replace(BASE, status={"phase": "Publishing"}, resource_version="42"),
            False,
            id="status-only",
        ),
        pytest.param(replace(BASE, spec={"suspend": True}), False, id="spec-without-generation"),
        pytest.param(replace(BASE, generation=3), True, id="generation"),
        pytest.param(replace(BASE, uid="uid-2"), True, id="uid"),
        pytest.param(
            replace(BASE, deletion_started=datetime(2026, 3, 1, tzinfo=UTC)), True, id="deleting"
        ),
        pytest.param(replace(BASE, finalizers=()), True, id="finalizer-removed"),
        pytest.param(replace(BASE, stream_id_annotation="sid"), True, id="stream-id-annotation"),
        pytest.param(replace(BASE, creating_annotation="t"), True, id="creating-annotation"),
        pytest.param(replace(BASE, refresh_annotation="1"), True, id="refresh-annotation"),
    ],
)
def test_observe_asks_for_work_only_for_what_the_controller_reads(
    changed: Observed, asks: bool
) -> None:
    registry = Registry()
    assert registry.observe(BASE, now=0.0) is True  # first sight
    assert registry.observe(changed, now=1.0) is asks
    entry = registry.get(KEY)
    assert entry is not None and entry.observed is changed  # always kept, even if no work


def test_tombstoned_uids_are_ignored_until_the_tombstone_expires() -> None:
    registry = Registry()
    assert registry.observe(BASE, now=0.0)
    registry.forget(KEY, uid="uid-1", now=100.0)
    assert registry.get(KEY) is None and len(registry) == 0
    assert registry.tombstoned("uid-1", now=100.0)
    # A late event of the finalized incarnation: ignored, and no entry comes back.
    assert registry.observe(BASE, now=100.0 + TOMBSTONE_SECONDS - 1) is False
    assert registry.get(KEY) is None
    # A new incarnation under the same name is not affected.
    successor = replace(BASE, uid="uid-2")
    assert registry.observe(successor, now=101.0) is True
    registry.forget(KEY, uid=None, now=102.0)
    # Once the tombstone expires, the uid is an ordinary uid again.
    assert registry.observe(BASE, now=100.0 + TOMBSTONE_SECONDS) is True
    assert not registry.tombstoned("uid-1", now=100.0 + TOMBSTONE_SECONDS)


def test_observe_gone() -> None:
    registry = Registry()
    assert registry.observe_gone(KEY, "uid-1") is False  # nothing known
    assert registry.get(KEY) is None
    registry.observe(replace(BASE, uid="uid-2"), now=0.0)
    # An older incarnation's DELETED, after its successor appeared: ignored.
    assert registry.observe_gone(KEY, "uid-1") is False
    entry = registry.get(KEY)
    assert entry is not None and entry.observed is not None and entry.observed.uid == "uid-2"
    # The current one's: the entry stays (its stream may still need releasing).
    assert registry.observe_gone(KEY, "uid-2") is True
    assert entry.observed is None and registry.get(KEY) is entry
    # Without a uid (or once nothing is observed) there is nothing to compare.
    registry.observe(BASE, now=1.0)
    assert registry.observe_gone(KEY, None) is True
    assert registry.observe_gone(KEY, "uid-9") is True


# ---- Pods --------------------------------------------------------------------------------


def pod_body(
    *,
    phase: str | None = "Running",
    ready: str = "True",
    deleting: bool = False,
    owner_kind: str = res.KIND,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "uid": "pod-1",
        "annotations": {HASH: "abc"},
        "ownerReferences": [
            {"kind": "ReplicaSet", "uid": "rs-1"},
            {"kind": owner_kind, "uid": "uid-1"},
        ],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-03-01T12:00:00Z"
    status: dict[str, Any] = {
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": ready},
        ]
    }
    if phase is not None:
        status["phase"] = phase
    return {"metadata": meta, "status": status}


def test_pod_facts_from_body() -> None:
    facts = PodFacts.from_body(pod_body(), hash_annotation=HASH)
    assert facts == PodFacts(
        uid="pod-1",
        phase="Running",
        ready=True,
        deleting=False,
        config_hash="abc",
        owner_uid="uid-1",
    )
    assert not PodFacts.from_body(pod_body(ready="False"), hash_annotation=HASH).ready
    assert PodFacts.from_body(pod_body(deleting=True), hash_annotation=HASH).deleting
    assert PodFacts.from_body(pod_body(owner_kind="Job"), hash_annotation=HASH).owner_uid is None
    bare = PodFacts.from_body({}, hash_annotation=HASH)
    assert bare == PodFacts(
        uid="", phase=None, ready=False, deleting=False, config_hash=None, owner_uid=None
    )


def _container(
    *,
    ready: bool = False,
    restarts: int = 0,
    state: dict[str, Any] | None = None,
    last: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "name": "publisher",
        "ready": ready,
        "restartCount": restarts,
        "state": state or {},
        "lastState": last or {},
    }


CRASH = {"terminated": {"exitCode": 3, "reason": "Error", "message": "RTSP 401:\n check it"}}


@pytest.mark.parametrize(
    ("statuses", "failure"),
    [
        pytest.param([], None, id="not-started"),
        pytest.param(
            [_container(state={"waiting": {"reason": "ContainerCreating"}})], None, id="creating"
        ),
        pytest.param([_container(ready=True, state={"running": {}})], None, id="ready"),
        pytest.param(
            [_container(state={"terminated": CRASH["terminated"]})],
            "publisher exited with code 3: RTSP 401: check it",
            id="exited-once",
        ),
        pytest.param(
            [_container(restarts=4, state={"waiting": {"reason": "CrashLoopBackOff"}}, last=CRASH)],
            "publisher exited with code 3 (restarted 4 times, CrashLoopBackOff): RTSP 401: "
            "check it",
            id="crash-loop",
        ),
        pytest.param(
            [_container(restarts=4, state={"running": {}}, last=CRASH)],
            "publisher exited with code 3 (restarted 4 times): RTSP 401: check it",
            id="restarted-not-ready-yet-keeps-the-failure",
        ),
        pytest.param(
            [_container(ready=True, restarts=4, state={"running": {}}, last=CRASH)],
            None,
            id="restarted-and-ready",
        ),
        pytest.param(
            [_container(state={"terminated": {"exitCode": 0, "reason": "Completed"}})],
            None,
            id="exited-cleanly",
        ),
        pytest.param(
            [
                _container(
                    state={
                        "waiting": {
                            "reason": "ErrImageNeverPull",
                            "message": 'image "x:1" is not present with pull policy of Never',
                        }
                    }
                )
            ],
            'publisher container cannot start: ErrImageNeverPull: image "x:1" is not present '
            "with pull policy of Never",
            id="image-never-pulled",
        ),
        pytest.param(
            [_container(state={"terminated": {"exitCode": 1, "message": "x" * 1000}})],
            "publisher exited with code 1: " + "x" * 367 + "...",
            id="long-message-clipped",
        ),
    ],
)
def test_container_failure(statuses: list[dict[str, Any]], failure: str | None) -> None:
    assert container_failure(statuses) == failure
    body = {"status": {"containerStatuses": statuses}}
    assert PodFacts.from_body(body, hash_annotation=HASH).failure == failure


@pytest.mark.parametrize(
    ("phase", "lost"),
    [
        pytest.param("Failed", True, id="Failed"),
        pytest.param("Succeeded", True, id="Succeeded"),
        pytest.param("Running", False, id="Running"),
        pytest.param("Pending", False, id="Pending"),
        pytest.param("Unknown", False, id="Unknown"),
        pytest.param(None, False, id="no-phase"),
    ],
)
def test_pod_lost(phase: str | None, lost: bool) -> None:
    assert PodFacts.from_body(pod_body(phase=phase), hash_annotation=HASH).lost is lost


def test_observe_pod() -> None:
    registry = Registry()
    running = PodFacts.from_body(pod_body(ready="False"), hash_annotation=HASH)
    ready = PodFacts.from_body(pod_body(), hash_annotation=HASH)
    # A Pod gone for a resource nobody knows: nothing to do, no entry made.
    assert registry.observe_pod(KEY, None) is False
    assert registry.get(KEY) is None
    # A Pod before its resource: remembered (the resource's event follows).
    assert registry.observe_pod(KEY, running) is True
    entry = registry.get(KEY)
    assert entry is not None and entry.pod == running and entry.observed is None
    assert registry.observe_pod(KEY, replace(running)) is False  # equal facts
    assert registry.observe_pod(KEY, ready) is True
    assert registry.observe_pod(KEY, None) is True
    assert entry.pod is None
    assert registry.observe_pod(KEY, None) is False


# ---- Entry -------------------------------------------------------------------------------


def test_new_incarnation_resets_everything_but_key_observed_and_pod() -> None:
    observed = replace(BASE, uid="uid-2")
    pod = PodFacts.from_body(pod_body(), hash_annotation=HASH)
    e = Entry(KEY, observed=observed, pod=pod)
    e.held = Held(
        stream_id="sid",
        uid="uid-1",
        api_key=SecretStr("k"),
        expires_at_ms=1,
        recorded=True,
        publish=None,
        secret_stream_id="sid",
        keepalive_at=5.0,
    )
    e.media = Media(stream_id="sid", ever_had_frames=True, polls_without_frames=3)
    e.fetched = Fetched(stream_id="sid", state=None, ended=True)
    e.problems = {"create": dec.Problem("R", "m", False, 1.0)}
    e.failed = ("RemoteEnded", "ended", 1)
    e.failed_end_reason = "expired"
    e.recreations = 4
    e.conditions = [res.Condition(type="Ready", status="True")]
    e.status_digest = 123
    e.synced_generation = 1
    e.create_after = 9.0
    e.create_failures = 2
    e.wake_at = 3.0
    e.leak_announced = "t"
    e.announced = "R"
    e.children_removed = True
    e.vanished_at = datetime(2026, 3, 1, tzinfo=UTC)
    e.phase = "Publishing"
    e.refresh_seen = "1"
    e.spec_cache = (1, "bad spec")
    e.pod_cache = DesiredPod(generation=1, manifest={}, config_hash="h")
    e.admitted_generation = 1
    e.rejected_since = datetime(2026, 3, 1, tzinfo=UTC)
    e.delivery_cache = (1, Decision("ServerPull", "spec.delivery is ServerPull"))
    e.blocked_pull = "rev"
    e.replacing_since = datetime(2026, 3, 1, tzinfo=UTC)
    e.pull_children_removed = True
    e.source_ends = 2
    e.standby = True
    e.revision_generation = 3
    e.released_stream_id = "old"
    e.revision_checked_at = 5.0
    e.standby_rounds = 2
    e.standby_secret = True
    fresh = Entry(KEY)
    # Every field was set to something else, so the test covers every field.
    changed = {n for n in Entry.__slots__ if getattr(e, n) != getattr(fresh, n)}
    assert changed == set(Entry.__slots__) - {"key"}

    e.new_incarnation()

    assert e.key == KEY and e.observed is observed and e.pod is pod
    for name in set(Entry.__slots__) - {"key", "observed", "pod"}:
        assert getattr(e, name) == getattr(fresh, name), name
    # Mutable defaults are new objects, not shared with another entry.
    assert e.problems is not fresh.problems and e.media is not fresh.media


def test_set_problem() -> None:
    e = Entry(KEY)
    a = dec.Problem("A", "a", False, 1.0)
    b = dec.Problem("B", "b", True, 2.0)
    e.set_problem("create", a)
    e.set_problem("secret", b)
    assert e.problems == {"create": a, "secret": b}
    e.set_problem("create", b)
    assert e.problems["create"] is b
    e.set_problem("create", None)
    e.set_problem("kube", None)  # absent: nothing to remove
    assert e.problems == {"secret": b}


@pytest.mark.parametrize(
    ("wakes", "expected"),
    [
        pytest.param([], None, id="none"),
        pytest.param([10.0], 10.0, id="one"),
        pytest.param([10.0, 5.0], 5.0, id="earlier-wins"),
        pytest.param([5.0, 10.0], 5.0, id="later-ignored"),
        pytest.param([7.0, 3.0, 9.0], 3.0, id="earliest-of-many"),
    ],
)
def test_wake(wakes: list[float], expected: float | None) -> None:
    e = Entry(KEY)
    for at in wakes:
        e.wake(at)
    assert e.wake_at == expected


def test_registry_bookkeeping() -> None:
    registry = Registry()
    a = registry.entry(KEY)
    assert registry.entry(KEY) is a and registry.get(KEY) is a
    b = registry.entry(("cams", "porch"))
    assert len(registry) == 2 and list(registry) == [a, b]
    assert list(registry.held()) == []
    b.held = Held(
        stream_id="sid",
        uid="u",
        api_key=SecretStr("k"),
        expires_at_ms=1,
        recorded=False,
        publish=ov.PublishInfo(url="wss://x", token=SecretStr("t")),
        secret_stream_id=None,
        keepalive_at=0.0,
    )
    assert list(registry.held()) == [b]
    # Iterating is over a snapshot: forgetting while iterating is safe.
    for e in registry:
        registry.forget(e.key, uid=None, now=0.0)
    assert len(registry) == 0
    assert a.owner == "OvershootStream cams/lobby"


def test_time_is_the_callers() -> None:
    """Tombstones use the caller's clock only (loop time), never the wall clock."""
    registry = Registry()
    registry.forget(KEY, uid="u", now=-1e9)
    assert not registry.tombstoned("u", now=-1e9 + TOMBSTONE_SECONDS)
    registry.forget(KEY, uid="u", now=1e9)
    assert registry.tombstoned("u", now=1e9 + TOMBSTONE_SECONDS - 1.0)


@pytest.mark.parametrize(
    "stored",
    [
        {"recreations": "many"},
        {"conditions": [{"type": "Ready"}]},
        {"expiresAt": "yesterday"},
        {"phase": "Sideways"},
    ],
    ids=["recreations", "condition-without-status", "expiresAt", "phase"],
)
def test_a_malformed_status_reads_as_empty(stored: dict[str, Any]) -> None:
    """A status edited by hand (or by an older operator) never stops a resource's
    processing, its deletion included: it reads as no status at all."""
    from overshoot_operator.reconciler import _parse_status

    observed = Observed.from_body(
        {"metadata": {"namespace": "ns", "name": "n", "uid": "u"}, "status": stored}
    )
    assert _parse_status(observed) == res.OvershootStreamStatus()


def test_an_unreadable_deletion_timestamp_counts_as_long_ago() -> None:
    observed = Observed.from_body(
        {"metadata": {"namespace": "ns", "name": "n", "uid": "u", "deletionTimestamp": "soon"}}
    )
    assert observed.deleting
    assert observed.deletion_started is not None and observed.deletion_started.year == 1970
