"""Two operator replicas competing for the leader Lease.

A standby makes no Overshoot call at all; a leader frozen past the Lease's duration (a
stalled node, a long pause) is replaced, and when it wakes it acts on nothing it still
remembers: it learns it lost the Lease and exits. Meanwhile the new leader deletes,
suspends and changes resources, and no stream is created, renewed or left behind twice.
"""

from __future__ import annotations

import time

import pytest

from fixtures.cluster import wait_for
from fixtures.faults import active_ids, keepalives_by_stream, operator_tracebacks, stream_doc
from fixtures.operator import API_KEY, put_api_key
from fixtures.streams import (
    create_stream,
    delete_stream,
    patch_stream,
    publisher_pod,
    status,
    stream_gone,
    stream_manifest,
    wait_provisioned,
)
from overshoot_localstack.operator import OperatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LEASE_SECONDS = 4.0  # tests/fixtures/operator.py runs the Lease on a fast clock


def _overshoot_requests(operator: OperatorProcess) -> float:
    """HTTP requests this replica sent to Overshoot (its own metrics)."""
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith("overshoot_api_calls_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _leads(operator: OperatorProcess) -> bool:
    return "Acquired Lease" in operator.logs()


def test_takeover_from_a_frozen_leader_then_changes_leak_nothing(
    kube_api, namespace, fresh_emulator, run_operator
):
    emulator = fresh_emulator(ttl_seconds=70)
    put_api_key(kube_api, namespace)
    first = run_operator(emulator)
    wait_for(lambda: _leads(first), what="the first replica to lead")
    second = run_operator(emulator)
    wait_for(lambda: "Waiting for Lease" in second.logs(), what="the second to stand by")

    names = ("gone", "nap", "tune")
    for name in names:
        create_stream(kube_api, namespace, stream_manifest(name))
    ids = {name: wait_provisioned(kube_api, namespace, name) for name in names}
    renewed = keepalives_by_stream(emulator)
    wait_for(
        lambda: all(keepalives_by_stream(emulator)[ids[n]] > renewed[ids[n]] for n in names),
        timeout=30,
        what="a keepalive of every stream",
    )
    # The standby sent nothing to Overshoot, and holds nothing: it never saw a resource.
    assert _overshoot_requests(second) == 0

    first.pause()
    frozen_at = time.monotonic()
    wait_for(lambda: _leads(second), timeout=4 * LEASE_SECONDS, what="the second to take over")
    failover = time.monotonic() - frozen_at
    print(f"failover after the leader froze: {failover:.1f} s")

    # The new leader acts on changes made while the old one is frozen.
    pod_uid = publisher_pod(kube_api, namespace, "tune").metadata.uid
    delete_stream(kube_api, namespace, "gone")
    patch_stream(kube_api, namespace, "nap", {"spec": {"suspend": True}})
    patch_stream(kube_api, namespace, "tune", {"spec": {"video": {"maxFps": 5}}})
    wait_for(lambda: stream_gone(kube_api, namespace, "gone"), what="gone finalized")
    wait_for(
        lambda: status(kube_api, namespace, "nap").get("phase") == "Suspended",
        what="nap suspended",
    )
    wait_for(
        lambda: (p := publisher_pod(kube_api, namespace, "tune")) and p.metadata.uid != pod_uid,
        timeout=45,
        what="tune's Pod replaced for the new spec",
    )

    # The old leader wakes up: it must not renew, recreate or delete anything it remembers.
    first.resume()
    assert first.wait_exit(timeout=30) == 1
    assert "Lost Lease" in first.logs()

    assert stream_doc(emulator, ids["gone"])["state"] == "ended"
    assert stream_doc(emulator, ids["nap"])["state"] == "ended"
    assert status(kube_api, namespace, "tune")["streamId"] == ids["tune"]
    assert active_ids(emulator) == {ids["tune"]}
    assert emulator.admin.calls(API_KEY)["create"] == len(names)
    # Ended streams got no keepalive after their end (a 404 would have been counted).
    ended = {ids["gone"], ids["nap"]}
    before = {k: v for k, v in keepalives_by_stream(emulator).items() if k in ended}

    # One operator's keepalive rate: over two intervals, two keepalives, not four.
    start = keepalives_by_stream(emulator)[ids["tune"]]
    wait_for(
        lambda: keepalives_by_stream(emulator)[ids["tune"]] >= start + 2,
        timeout=40,
        what="two more keepalives of tune",
    )
    quiet_from = time.monotonic()
    wait_for(
        lambda: keepalives_by_stream(emulator)[ids["tune"]] >= start + 3,
        timeout=40,
        what="a third keepalive of tune",
    )
    # One renewal every ~10 s (60 s before a 70 s expiry): a second renewer would have
    # doubled the count within the wait for the third one.
    assert time.monotonic() - quiet_from >= 4.0
    assert {k: v for k, v in keepalives_by_stream(emulator).items() if k in ended} == before
    assert operator_tracebacks(first.logs() + second.logs()) == []


def test_a_clean_stop_hands_over_at_once(kube_api, namespace, fresh_emulator, run_operator):
    """SIGTERM: the leader stops acting, releases the Lease; the standby takes it at its
    next try, and resumes every stream from status without a single Overshoot call."""
    emulator = fresh_emulator(ttl_seconds=300)
    put_api_key(kube_api, namespace)
    first = run_operator(emulator)
    wait_for(lambda: _leads(first), what="the first replica to lead")
    second = run_operator(emulator)
    wait_for(lambda: "Waiting for Lease" in second.logs(), what="the second to stand by")
    for name in ("a", "b"):
        create_stream(kube_api, namespace, stream_manifest(name))
    ids = {name: wait_provisioned(kube_api, namespace, name) for name in ("a", "b")}
    wait_for(
        lambda: all(status(kube_api, namespace, n).get("expiresAt") for n in ids),
        what="expiresAt recorded",
    )
    calls = emulator.admin.calls(API_KEY)

    stopped_at = time.monotonic()
    first.stop()
    wait_for(lambda: _leads(second), timeout=2 * LEASE_SECONDS, what="the standby to lead")
    print(f"handover after SIGTERM: {time.monotonic() - stopped_at:.1f} s")
    assert "Released Lease" in first.logs()
    # The new leader resumed both leases from status, with no create and no keepalive
    # (300 s leases, far from expiry).
    wait_for(lambda: second.logs().count("Resumed stream") == len(ids), what="both streams resumed")
    after = emulator.admin.calls(API_KEY)
    assert (after["create"], after["keepalive"]) == (calls["create"], calls["keepalive"])
    assert {n: status(kube_api, namespace, n)["streamId"] for n in ids} == ids
    assert active_ids(emulator) == set(ids.values())
