"""The ten invariants of ../shared/design.md, each with a test that fails if it breaks.

Real control plane, the operator as a process under its own RBAC, the emulator as
Overshoot; call counts come from the emulator's admin surface.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from kubernetes import client

from fixtures.cluster import wait_for
from fixtures.operator import API_KEY, put_api_key
from fixtures.streams import (
    condition,
    create_stream,
    delete_stream,
    events,
    get_stream,
    live_pod_uid,
    patch_stream,
    publish_secret,
    publisher_pod,
    status,
    stream_gone,
    stream_manifest,
)

pytestmark = pytest.mark.integration


def _provisioned(kube_api, namespace, name):
    stream_id = wait_for(
        lambda: status(kube_api, namespace, name).get("streamId"), what=f"{name} streamId"
    )
    wait_for(lambda: publish_secret(kube_api, namespace, name), what=f"{name} Secret")
    wait_for(lambda: publisher_pod(kube_api, namespace, name), what=f"{name} Pod")
    return stream_id


def test_remote_stream_reaped_is_recreated(kube_api, namespace, emulator_reset, run_operator):
    """Invariant 6: new stream, Secret updated, recreations counted, an Event says why."""
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("gate"))
    old = _provisioned(kube_api, namespace, "gate")
    pod_uid = publisher_pod(kube_api, namespace, "gate").metadata.uid

    emulator.admin.reap(old)
    new = wait_for(
        lambda: (sid := status(kube_api, namespace, "gate").get("streamId")) != old and sid,
        what="a new streamId after the remote stream was reaped",
    )
    secret = wait_for(
        lambda: (s := publish_secret(kube_api, namespace, "gate")) and s["streamId"] == new and s,
        what="Secret moved to the new stream",
    )
    assert secret["token"]
    st = status(kube_api, namespace, "gate")
    assert st["recreations"] == 1
    assert (
        get_stream(kube_api, namespace, "gate")["metadata"]["annotations"]["overshoot.ai/stream-id"]
        == new
    )
    # The publisher follows the Secret; its Pod is not restarted for a new room.
    assert live_pod_uid(kube_api, namespace, "gate") == pod_uid
    wait_for(
        lambda: any(
            e.reason == "StreamRecreated" and "reaped" in e.message
            for e in events(kube_api, namespace)
        ),
        what="a StreamRecreated Event naming the end reason",
    )
    assert len(emulator.admin.streams(state="active")) == 1


def test_on_remote_end_fail(kube_api, namespace, emulator_reset, run_operator):
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("strict", onRemoteEnd="Fail"))
    old = _provisioned(kube_api, namespace, "strict")
    emulator.admin.reap(old)
    wait_for(
        lambda: status(kube_api, namespace, "strict").get("phase") == "Failed",
        what="phase Failed when onRemoteEnd is Fail",
    )
    ready = condition(kube_api, namespace, "strict", "Ready")
    assert ready["reason"] == "RemoteStreamEnded"
    assert "onRemoteEnd" in ready["message"]
    time.sleep(3)
    assert emulator.admin.calls(API_KEY)["create"] == 1


def test_delete_with_api_down_releases_finalizer(kube_api, namespace, fresh_emulator, run_operator):
    """Invariant 1: deletion never hangs; keepalives stop at once."""
    # A 70 s lease: keepalives every ~10 s, so a window of 12 s would see one.
    emulator = fresh_emulator(ttl_seconds=70)
    put_api_key(kube_api, namespace)
    operator = run_operator(emulator)  # delete_give_up_seconds=6 in tests
    create_stream(kube_api, namespace, stream_manifest("door"))
    stream_id = _provisioned(kube_api, namespace, "door")
    emulator.admin.fault(status=503, count=1000, endpoints=["delete"])
    delete_stream(kube_api, namespace, "door")
    # While DELETE keeps failing, `kubectl get ovs` says why the resource is still there.
    wait_for(
        lambda: status(kube_api, namespace, "door").get("phase") == "Deleting",
        timeout=10,
        what="phase Deleting while DELETE is retried",
    )
    wait_for(
        lambda: stream_gone(kube_api, namespace, "door"),
        timeout=45,
        what="finalizer released although DELETE keeps failing",
    )
    emulator.admin.clear_faults()
    renewed = emulator.admin.stream(stream_id)["keepalives"]
    # Longer than a keepalive interval: the passing of time is what this checks.
    time.sleep(12)
    assert emulator.admin.stream(stream_id)["keepalives"] == renewed, "keepalives continued"
    assert any(e.reason == "DeleteAbandoned" for e in events(kube_api, namespace)) or (
        "Gave up deleting" in operator.logs()
    )
    # The stream is left to its lease: still active remotely, never renewed again.
    assert emulator.admin.stream(stream_id)["state"] == "active"


def test_delete_when_remote_already_gone(kube_api, namespace, emulator_reset, run_operator):
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("gone", onRemoteEnd="Fail"))
    stream_id = _provisioned(kube_api, namespace, "gone")
    emulator.admin.reap(stream_id)
    wait_for(lambda: status(kube_api, namespace, "gone").get("phase") == "Failed", what="Failed")
    delete_stream(kube_api, namespace, "gone")
    wait_for(lambda: stream_gone(kube_api, namespace, "gone"), what="deleted")


def test_children_are_garbage_collected(kube_api, namespace, emulator_reset, run_operator):
    """Invariant 9: ownerReferences; the resource's own labels are not copied."""
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    run_operator(emulator)
    manifest = stream_manifest("lab")
    manifest["metadata"]["labels"] = {"argocd.argoproj.io/instance": "cameras", "team": "x"}
    create_stream(kube_api, namespace, manifest)
    _provisioned(kube_api, namespace, "lab")
    pod = publisher_pod(kube_api, namespace, "lab")
    assert "argocd.argoproj.io/instance" not in (pod.metadata.labels or {})
    assert "team" not in (pod.metadata.labels or {})
    secret = client.CoreV1Api(kube_api).read_namespaced_secret("lab-publish", namespace)
    assert secret.metadata.owner_references[0].kind == "OvershootStream"
    assert "argocd.argoproj.io/instance" not in (secret.metadata.labels or {})
    delete_stream(kube_api, namespace, "lab")
    wait_for(
        lambda: (
            publisher_pod(kube_api, namespace, "lab") is None
            and publish_secret(kube_api, namespace, "lab") is None
        ),
        timeout=60,
        what="Pod and Secret garbage-collected",
    )


def test_suspend_releases_and_resume_recreates(kube_api, namespace, emulator_reset, run_operator):
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("nap"))
    old = _provisioned(kube_api, namespace, "nap")
    patch_stream(kube_api, namespace, "nap", {"spec": {"suspend": True}})
    wait_for(
        lambda: status(kube_api, namespace, "nap").get("phase") == "Suspended",
        what="phase Suspended",
    )
    wait_for(lambda: publisher_pod(kube_api, namespace, "nap") is None, what="Pod removed")
    assert emulator.admin.stream(old)["state"] == "ended"
    assert publish_secret(kube_api, namespace, "nap") is None
    keepalives = emulator.admin.calls(API_KEY)["keepalive"]
    patch_stream(kube_api, namespace, "nap", {"spec": {"suspend": False}})
    new = wait_for(
        lambda: (sid := status(kube_api, namespace, "nap").get("streamId")) and sid != old and sid,
        what="a new stream after resume",
    )
    wait_for(lambda: publisher_pod(kube_api, namespace, "nap"), what="Pod back")
    assert emulator.admin.stream(new)["state"] == "active"
    assert emulator.admin.calls(API_KEY)["keepalive"] - keepalives <= 1


def test_operator_restart_recreates_nothing(kube_api, namespace, emulator_reset, run_operator):
    """Invariant 3: a restart (even SIGKILL) is invisible to the data plane."""
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    operator = run_operator(emulator)
    for name in ("a", "b", "c"):
        create_stream(kube_api, namespace, stream_manifest(name))
    ids = {n: _provisioned(kube_api, namespace, n) for n in ("a", "b", "c")}
    pods = {n: publisher_pod(kube_api, namespace, n).metadata.uid for n in ids}
    tokens = {n: publish_secret(kube_api, namespace, n)["token"] for n in ids}
    wait_for(
        lambda: all(status(kube_api, namespace, n).get("expiresAt") for n in ids),
        what="expiresAt recorded",
    )
    operator.kill()
    calls = emulator.admin.calls(API_KEY)
    restarted = run_operator(emulator)
    # A positive signal that the new process took every stream over, not just silence.
    wait_for(lambda: restarted.logs().count("Resumed stream") == 3, what="three streams resumed")
    after = emulator.admin.calls(API_KEY)
    assert (after["create"], after["keepalive"]) == (calls["create"], calls["keepalive"])
    for n in ids:
        assert status(kube_api, namespace, n)["streamId"] == ids[n]
        assert live_pod_uid(kube_api, namespace, n) == pods[n]
        # Not even a keepalive was needed: the stored lease was comfortably alive.
        assert publish_secret(kube_api, namespace, n)["token"] == tokens[n]
    assert len(emulator.admin.streams(state="active")) == 3


def test_killed_between_create_and_record_leaks_at_most_one_lease(
    kube_api, namespace, fresh_emulator, run_operator
):
    """Invariant 2 (bounded case): if the id never got written, the orphan is not renewed."""
    # A 70 s lease: keepalives every ~10 s, so a renewal of the orphan would show in 12 s.
    emulator = fresh_emulator(ttl_seconds=70)
    put_api_key(kube_api, namespace)
    # A slow create: kill while it is in flight.
    emulator.admin.fault(latency_ms=3000, count=1, endpoints=["create"])
    operator = run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("crash"))
    wait_for(lambda: emulator.admin.calls(API_KEY)["create"] >= 1, what="create in flight")
    operator.kill()
    # The emulator finishes the create the dead operator never saw.
    orphan = wait_for(
        lambda: [s["id"] for s in emulator.admin.streams(state="active")],
        timeout=10,
        what="the stream the interrupted create made",
    )
    assert len(orphan) == 1
    run_operator(emulator)
    live = wait_for(
        lambda: status(kube_api, namespace, "crash").get("streamId"), what="streamId after restart"
    )
    assert live not in orphan
    wait_for(
        lambda: any(e.reason == "StreamPossiblyLeaked" for e in events(kube_api, namespace)),
        what="an Event saying a create may have leaked",
    )
    renewed = emulator.admin.stream(orphan[0])["keepalives"]
    time.sleep(12)  # longer than a keepalive interval: the passing of time is the subject
    assert emulator.admin.stream(orphan[0])["keepalives"] == renewed, "orphan was renewed"
    assert emulator.admin.stream(live)["keepalives"] >= 1


def test_killed_mid_keepalive_resumes_the_same_stream_and_pod(
    kube_api, namespace, fresh_emulator, run_operator
):
    """Invariant 3: a SIGKILL while a keepalive is in flight loses nothing on restart."""
    # A 70 s lease: keepalives every ~10 s, so one is soon in flight.
    emulator = fresh_emulator(ttl_seconds=70)
    put_api_key(kube_api, namespace)
    operator = run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("tock"))
    stream_id = _provisioned(kube_api, namespace, "tock")
    pod_uid = publisher_pod(kube_api, namespace, "tock").metadata.uid
    token = publish_secret(kube_api, namespace, "tock")["token"]
    keepalives = emulator.admin.calls(API_KEY)["keepalive"]
    emulator.admin.fault(latency_ms=4000, count=1, endpoints=["keepalive"])
    wait_for(
        lambda: emulator.admin.calls(API_KEY)["keepalive"] > keepalives,
        timeout=30,
        what="a timer keepalive in flight",
    )
    time.sleep(1)
    operator.kill()
    creates = emulator.admin.calls(API_KEY)["create"]
    run_operator(emulator)
    # The restarted operator renews the same lease and rotates the token again.
    wait_for(
        lambda: publish_secret(kube_api, namespace, "tock")["token"] != token,
        timeout=40,
        what="a fresh token after the restart",
    )
    assert emulator.admin.calls(API_KEY)["create"] == creates
    assert status(kube_api, namespace, "tock")["streamId"] == stream_id
    assert live_pod_uid(kube_api, namespace, "tock") == pod_uid
    assert [s["id"] for s in emulator.admin.streams(state="active")] == [stream_id]


def test_deleted_pod_is_recreated(kube_api, namespace, emulator_reset, run_operator):
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("pod"))
    stream_id = _provisioned(kube_api, namespace, "pod")
    old_uid = publisher_pod(kube_api, namespace, "pod").metadata.uid
    client.CoreV1Api(kube_api).delete_namespaced_pod(
        "pod-publisher", namespace, grace_period_seconds=0
    )
    wait_for(
        lambda: (p := publisher_pod(kube_api, namespace, "pod")) and p.metadata.uid != old_uid,
        timeout=45,
        what="a new publisher Pod",
    )
    assert status(kube_api, namespace, "pod")["streamId"] == stream_id


def test_missing_api_key_secret_then_fixed(kube_api, namespace, emulator_reset, run_operator):
    """Invariant 8: a clear condition naming object, field and fix; noticed quickly."""
    emulator = emulator_reset
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("nokey"))
    ready = wait_for(
        lambda: (
            (c := condition(kube_api, namespace, "nokey", "Ready"))
            and c.get("reason") == "SecretNotFound"
            and c
        ),
        what="Ready False with reason SecretNotFound",
    )
    assert f"OvershootStream {namespace}/nokey" in ready["message"]
    assert "spec.apiKeySecretRef" in ready["message"]
    assert "overshoot-api-key" in ready["message"]
    assert status(kube_api, namespace, "nokey")["phase"] == "Pending"
    assert emulator.admin.calls(API_KEY)["create"] == 0
    put_api_key(kube_api, namespace)
    wait_for(
        lambda: status(kube_api, namespace, "nokey").get("streamId"),
        timeout=40,
        what="stream created soon after the Secret appears",
    )


def test_unauthorized_storm_is_bounded(kube_api, namespace, emulator_reset, run_operator):
    """401 on every call: the right condition, and calls stay few (invariant 4/8)."""
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    emulator.admin.fault(status=401, count=10_000, body='{"detail": "Invalid API key"}')
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("bad"))
    ready = wait_for(
        lambda: (
            (c := condition(kube_api, namespace, "bad", "Ready"))
            and c.get("reason") == "ApiKeyRejected"
            and c
        ),
        what="Ready False with reason ApiKeyRejected",
    )
    assert "overshoot-api-key" in ready["message"]
    time.sleep(10)
    assert emulator.admin.calls(API_KEY)["create"] <= 2


@pytest.mark.parametrize(
    ("code", "reason"),
    [(402, "InsufficientCredits"), (503, "OvershootUnavailable"), (429, "RateLimited")],
)
def test_error_storms_map_to_conditions(
    kube_api, namespace, emulator_reset, run_operator, code, reason
):
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    emulator.admin.fault(status=code, count=10_000, retry_after=5)
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("storm"))
    wait_for(
        lambda: condition(kube_api, namespace, "storm", "Ready").get("reason") == reason,
        what=f"Ready reason {reason} under a {code} storm",
    )
    calls_then = emulator.admin.calls(API_KEY)["create"]
    time.sleep(8)
    # Backoff: at most a couple more attempts in 8 s, never a hot loop.
    assert emulator.admin.calls(API_KEY)["create"] - calls_then <= 3
    emulator.admin.clear_faults()
    wait_for(
        lambda: status(kube_api, namespace, "storm").get("streamId"),
        timeout=90,
        what="recovery after the storm",
    )


def test_no_secret_material_anywhere(kube_api, namespace, emulator_reset, run_operator):
    """Invariant 5: tokens only in the owned Secret; the API key only in the user's."""
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    operator = run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("quiet"))
    _provisioned(kube_api, namespace, "quiet")
    secret = publish_secret(kube_api, namespace, "quiet")
    token = secret["token"]
    obj = get_stream(kube_api, namespace, "quiet")
    pod = client.ApiClient().sanitize_for_serialization(publisher_pod(kube_api, namespace, "quiet"))
    evs = [e.message or "" for e in events(kube_api, namespace)]
    blob = json.dumps([obj, pod, evs]) + operator.logs()
    assert token not in blob
    assert API_KEY not in blob


def test_timer_keepalive_rotates_token_before_expiry(
    kube_api, namespace, fresh_emulator, run_operator
):
    """Invariant 4: keepalives come from the expiry, well inside the lease, with a new token."""
    # A 70 s lease: the schedule aims 60 s before expiry, so keepalives run every ~10 s.
    emulator = fresh_emulator(ttl_seconds=70)
    put_api_key(kube_api, namespace)
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("tick"))
    stream_id = _provisioned(kube_api, namespace, "tick")
    first = publish_secret(kube_api, namespace, "tick")["token"]
    expires = status(kube_api, namespace, "tick").get("expiresAt")
    wait_for(
        lambda: publish_secret(kube_api, namespace, "tick")["token"] != first,
        timeout=40,
        what="a timer keepalive rotating the token",
    )
    wait_for(
        lambda: status(kube_api, namespace, "tick").get("expiresAt") != expires,
        what="expiresAt moved forward",
    )
    remote = emulator.admin.stream(stream_id)
    assert remote["state"] == "active"
    assert remote["keepalives"] >= 1
    assert status(kube_api, namespace, "tick")["streamId"] == stream_id


def test_spec_change_replaces_pod_not_stream(kube_api, namespace, emulator_reset, run_operator):
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    run_operator(emulator)
    create_stream(kube_api, namespace, stream_manifest("tune"))
    stream_id = _provisioned(kube_api, namespace, "tune")
    old_uid = publisher_pod(kube_api, namespace, "tune").metadata.uid
    patch_stream(kube_api, namespace, "tune", {"spec": {"video": {"maxFps": 5}}})
    new_pod = wait_for(
        lambda: (
            (p := publisher_pod(kube_api, namespace, "tune")) and p.metadata.uid != old_uid and p
        ),
        timeout=45,
        what="publisher Pod replaced after a video change",
    )
    env = {e.name: e.value for e in new_pod.spec.containers[0].env}
    assert '"maxFps":5' in env["OVERSHOOT_PUBLISHER_CONFIG"]
    assert status(kube_api, namespace, "tune")["streamId"] == stream_id
    assert emulator.admin.calls(API_KEY)["create"] == 1
    # A change that does not touch the Pod leaves it alone.
    patch_stream(kube_api, namespace, "tune", {"spec": {"keepaliveIntervalSeconds": 60}})
    wait_for(
        lambda: status(kube_api, namespace, "tune").get("observedGeneration") == 3,
        what="generation 3 observed",
    )
    assert live_pod_uid(kube_api, namespace, "tune") == new_pod.metadata.uid


def test_adopts_stream_from_annotation(kube_api, namespace, emulator_reset, run_operator):
    emulator = emulator_reset
    put_api_key(kube_api, namespace)
    created = httpx.post(
        f"{emulator.api_url}/streams",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={},
    ).json()
    emulator.admin.reset_calls()
    run_operator(emulator)
    manifest = stream_manifest("adopt")
    manifest["metadata"]["annotations"] = {"overshoot.ai/stream-id": created["id"]}
    create_stream(kube_api, namespace, manifest)
    assert _provisioned(kube_api, namespace, "adopt") == created["id"]
    assert emulator.admin.calls(API_KEY)["create"] == 0
    assert status(kube_api, namespace, "adopt")["recreations"] == 0
