"""The pure decisions: phase and conditions from the facts, and the error-to-problem table."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from overshoot_operator import decisions as dec
from overshoot_operator import overshoot as ov
from overshoot_operator import resource as res
from overshoot_operator.kube import (
    ConflictError,
    KubeError,
    KubeUnavailable,
    NotFoundError,
    SecretProblem,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
FRESH = 30.0
OWNER = "OvershootStream ns/lobby"
KEY_REF = "Secret ns/overshoot-api-key key apiKey"
T = res.ConditionType

TRANSIENT = dec.Problem("OvershootUnavailable", "Overshoot is draining", False, 5.0)
USER_FIX = dec.Problem("ApiKeyRejected", "the key was rejected", True, 60.0)


def facts(**changes: Any) -> dec.Facts:
    """A held stream with no frames yet and a Pod that is not ready: override per row."""
    base = dec.Facts(
        generation=3,
        suspended=False,
        failed_reason=None,
        failed_message=None,
        stream_id="sid-1",
        lease_held=True,
        last_frame_at_ms=None,
        ever_had_frames=False,
        pod_ready=False,
        problem=None,
    )
    return replace(base, **changes)


def by_type(conditions: list[res.Condition]) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in conditions}


FRESH_FRAME = NOW_MS - 1_000
OLD_FRAME = NOW_MS - int(FRESH * 1000) - 1_000

# (facts, phase, {type: (status, reason, a piece of the message)})
SUMMARY_ROWS = [
    pytest.param(
        facts(suspended=True, problem=USER_FIX, last_frame_at_ms=FRESH_FRAME),
        "Suspended",
        {
            T.READY: ("False", "Suspended", "spec.suspend"),
            T.STREAM_ACTIVE: ("False", "Suspended", "no remote stream"),
            T.PUBLISHING: ("False", "Suspended", "no publisher"),
        },
        id="suspended-wins-over-everything",
    ),
    pytest.param(
        facts(
            failed_reason="RemoteEnded",
            failed_message="the stream ended: expired",
            last_frame_at_ms=FRESH_FRAME,
        ),
        "Failed",
        {
            T.READY: ("False", "RemoteEnded", "the stream ended: expired"),
            T.STREAM_ACTIVE: ("False", "RemoteEnded", "the stream ended: expired"),
            T.PUBLISHING: ("False", "RemoteEnded", "the stream ended: expired"),
        },
        id="failed",
    ),
    pytest.param(
        facts(failed_reason="InvalidSpec", failed_message=None),
        "Failed",
        {T.READY: ("False", "InvalidSpec", "InvalidSpec")},
        id="failed-without-message-uses-reason",
    ),
    pytest.param(
        facts(last_frame_at_ms=FRESH_FRAME, ever_had_frames=True, pod_ready=True),
        "Publishing",
        {
            T.READY: ("True", "Publishing", "Frames are reaching Overshoot"),
            T.STREAM_ACTIVE: ("True", "LeaseHeld", "Stream sid-1 is active"),
            T.PUBLISHING: ("True", "FramesArriving", "frames arriving"),
        },
        id="held-fresh-frames",
    ),
    pytest.param(
        facts(last_frame_at_ms=OLD_FRAME, ever_had_frames=True, pod_ready=True),
        "Degraded",
        {
            T.READY: ("False", "FramesStopped", "Frames stopped"),
            T.STREAM_ACTIVE: ("True", "LeaseHeld", "sid-1"),
            T.PUBLISHING: ("False", "FramesStopped", "in the last 30s"),
        },
        id="held-frames-stopped",
    ),
    pytest.param(
        facts(pod_ready=False),
        "Provisioning",
        {
            T.READY: ("False", "WaitingForFrames", "waiting for the first frames"),
            T.STREAM_ACTIVE: ("True", "LeaseHeld", "sid-1"),
            T.PUBLISHING: ("False", "WaitingForFrames", "publisher Pod not ready yet"),
        },
        id="held-waiting-pod-not-ready",
    ),
    pytest.param(
        facts(pod_ready=True),
        "Provisioning",
        {T.PUBLISHING: ("False", "WaitingForFrames", "no frame yet")},
        id="held-waiting-pod-ready-no-frame-yet",
    ),
    pytest.param(
        facts(pod_ready=None),
        "Provisioning",
        {T.PUBLISHING: ("False", "WaitingForFrames", "no frame yet")},
        id="held-waiting-pod-unknown-no-frame-yet",
    ),
    pytest.param(
        facts(lease_held=False, stream_id=None, pod_ready=None, problem=TRANSIENT),
        "Pending",
        {
            T.READY: ("False", "OvershootUnavailable", "draining"),
            T.STREAM_ACTIVE: ("False", "OvershootUnavailable", "draining"),
            T.PUBLISHING: ("False", "NoStream", "No remote stream"),
        },
        id="no-lease-with-transient-problem",
    ),
    pytest.param(
        facts(lease_held=False, stream_id=None, pod_ready=None, problem=USER_FIX),
        "Pending",
        {
            T.READY: ("False", "ApiKeyRejected", "rejected"),
            T.STREAM_ACTIVE: ("False", "ApiKeyRejected", "rejected"),
        },
        id="no-lease-with-user-fixable-problem",
    ),
    pytest.param(
        facts(lease_held=False, stream_id=None, pod_ready=None),
        "Pending",
        {
            T.READY: ("False", "Creating", "Creating the remote stream"),
            T.STREAM_ACTIVE: ("False", "Creating", "Creating the remote stream"),
            T.PUBLISHING: ("False", "NoStream", "No remote stream"),
        },
        id="no-lease-no-problem",
    ),
    pytest.param(
        facts(problem=USER_FIX, last_frame_at_ms=FRESH_FRAME, ever_had_frames=True),
        "Degraded",
        {
            T.READY: ("False", "ApiKeyRejected", "the key was rejected"),
            T.STREAM_ACTIVE: ("True", "LeaseHeld", "sid-1"),
            T.PUBLISHING: ("True", "FramesArriving", "frames arriving"),
        },
        id="held-user-fixable-problem-degraded-even-with-frames",
    ),
    pytest.param(
        facts(problem=TRANSIENT, last_frame_at_ms=FRESH_FRAME, ever_had_frames=True),
        "Publishing",
        {
            T.READY: ("True", "Publishing", "Publishing; Overshoot is draining"),
            T.PUBLISHING: ("True", "FramesArriving", "frames arriving"),
        },
        id="held-transient-problem-frames-flow",
    ),
    pytest.param(
        facts(problem=TRANSIENT, pod_ready=True),
        "Provisioning",
        {T.READY: ("False", "WaitingForFrames", "first frames")},
        id="held-transient-problem-no-frames-yet",
    ),
    pytest.param(
        facts(problem=TRANSIENT, last_frame_at_ms=OLD_FRAME, ever_had_frames=True),
        "Degraded",
        {T.READY: ("False", "FramesStopped", "Frames stopped")},
        id="held-transient-problem-frames-stopped",
    ),
    pytest.param(
        # A frame time without a lease (stale media) says nothing about this stream.
        facts(lease_held=False, stream_id=None, last_frame_at_ms=FRESH_FRAME),
        "Pending",
        {T.READY: ("False", "Creating", "Creating")},
        id="no-lease-never-publishing",
    ),
    pytest.param(
        facts(publisher_failure="publisher exited with code 3: RTSP credentials rejected"),
        "Degraded",
        {
            T.READY: ("False", "PublisherFailing", "RTSP credentials rejected"),
            T.PUBLISHING: ("False", "PublisherFailing", "kubectl logs --previous"),
            T.STREAM_ACTIVE: ("True", "LeaseHeld", "sid-1"),
        },
        id="held-publisher-failing",
    ),
    pytest.param(
        facts(
            publisher_failure="publisher exited with code 1",
            last_frame_at_ms=OLD_FRAME,
            ever_had_frames=True,
        ),
        "Degraded",
        {T.READY: ("False", "PublisherFailing", "code 1")},
        id="held-publisher-failing-after-frames-stopped",
    ),
    pytest.param(
        # Frames still arrive (the crash is of an older container): what Overshoot sees wins.
        facts(publisher_failure="publisher exited with code 1", last_frame_at_ms=FRESH_FRAME),
        "Publishing",
        {T.READY: ("True", "Publishing", "Frames are reaching")},
        id="held-fresh-frames-beat-an-old-crash",
    ),
    pytest.param(
        facts(publisher_failure="crashed", lease_held=False, stream_id=None),
        "Pending",
        {T.PUBLISHING: ("False", "NoStream", "No remote stream")},
        id="no-lease-publisher-failure-not-reported",
    ),
    # ServerPull: the frame times are Overshoot's pulls; no publisher.
    pytest.param(
        facts(pulled=True, pod_ready=None, last_frame_at_ms=FRESH_FRAME, ever_had_frames=True),
        "Publishing",
        {
            T.READY: ("True", "Publishing", "Frames are reaching Overshoot"),
            T.PUBLISHING: ("True", "FramesArriving", "frames arriving"),
        },
        id="pulled-publishing",
    ),
    pytest.param(
        facts(pulled=True, pod_ready=None),
        "Provisioning",
        {T.PUBLISHING: ("False", "WaitingForFrames", "Overshoot's first pull")},
        id="pulled-waiting-for-the-first-pull",
    ),
    pytest.param(
        facts(pulled=True, pod_ready=None, last_frame_at_ms=OLD_FRAME, ever_had_frames=True),
        "Degraded",
        {
            T.READY: ("False", "SourceStale", "Overshoot reconnects by itself"),
            T.STREAM_ACTIVE: ("True", "LeaseHeld", "is active"),
            T.PUBLISHING: ("False", "SourceStale", "pulled no frame from the camera"),
        },
        id="pulled-source-stale-is-not-a-failed-stream",
    ),
]


@pytest.mark.parametrize(("fact", "phase", "expected"), SUMMARY_ROWS)
def test_summarize(fact: dec.Facts, phase: str, expected: dict[str, tuple[str, str, str]]) -> None:
    got_phase, conditions = dec.summarize(fact, [], now=NOW, fresh_seconds=FRESH)
    assert got_phase == phase
    got = by_type(conditions)
    assert set(got) == {T.READY, T.STREAM_ACTIVE, T.PUBLISHING}
    for type_, (status, reason, text) in expected.items():
        assert got[type_][:2] == (status, reason), type_
        assert text in got[type_][2], (type_, got[type_][2])
    assert all(c.observed_generation == fact.generation for c in conditions)
    assert all(c.last_transition_time == NOW for c in conditions)


def test_summarize_does_not_change_the_input() -> None:
    before: list[res.Condition] = []
    dec.summarize(facts(), before, now=NOW, fresh_seconds=FRESH)
    assert before == []


def test_last_transition_time_moves_only_when_status_changes() -> None:
    waiting = facts(pod_ready=False)
    _, first = dec.summarize(waiting, [], now=NOW, fresh_seconds=FRESH)

    # Same statuses, new reason/message for Publishing: no transition anywhere.
    later = NOW + timedelta(minutes=1)
    _, second = dec.summarize(
        replace(waiting, pod_ready=True), first, now=later, fresh_seconds=FRESH
    )
    assert by_type(second)[T.PUBLISHING][2] == "Waiting for frames: no frame yet"
    assert [c.last_transition_time for c in second] == [NOW] * 3

    # Frames arrive: Ready and Publishing flip; StreamActive stays True and keeps its time.
    flowing = replace(waiting, last_frame_at_ms=int(later.timestamp() * 1000))
    latest = later + timedelta(seconds=5)
    _, third = dec.summarize(flowing, second, now=latest, fresh_seconds=FRESH)
    times = {c.type: c.last_transition_time for c in third}
    assert times == {T.STREAM_ACTIVE: NOW, T.PUBLISHING: latest, T.READY: latest}
    # The order of the list is kept across updates.
    assert [c.type for c in third] == [c.type for c in first]


def test_transition_time_is_truncated_to_seconds() -> None:
    now = NOW.replace(microsecond=654321)
    _, conditions = dec.summarize(facts(), [], now=now, fresh_seconds=FRESH)
    assert {c.last_transition_time for c in conditions} == {NOW}


# ---- problem_from_error ------------------------------------------------------------------

KA = ov.Endpoint.KEEPALIVE


@pytest.mark.parametrize(
    ("err", "reason", "user_fixable", "retry_in", "texts"),
    [
        pytest.param(
            ov.Unauthorized("401", endpoint=KA, status_code=401),
            "ApiKeyRejected",
            True,
            60.0,
            (OWNER, KEY_REF, "(401)", "valid, assigned key"),
            id="unauthorized-401",
        ),
        pytest.param(
            ov.Unauthorized("403", endpoint=KA, status_code=403),
            "ApiKeyRejected",
            True,
            60.0,
            ("(403)",),
            id="unauthorized-403",
        ),
        pytest.param(
            ov.PaymentRequired("402", endpoint=KA, status_code=402),
            "InsufficientCredits",
            True,
            60.0,
            (OWNER, KEY_REF, "add credits"),
            id="payment-required",
        ),
        pytest.param(
            ov.RateLimited("429", endpoint=KA, status_code=429, retry_after=7.0),
            "RateLimited",
            False,
            7.0,
            (OWNER, "retrying in 7s"),
            id="rate-limited-with-retry-after",
        ),
        pytest.param(
            ov.RateLimited("429", endpoint=KA, status_code=429),
            "RateLimited",
            False,
            30.0,
            ("retrying in 30s",),
            id="rate-limited-without-retry-after",
        ),
        pytest.param(
            ov.OvershootUnavailable("Overshoot keepalive answered 503", endpoint=KA),
            "OvershootUnavailable",
            False,
            5.0,
            (OWNER, "answered 503", "retrying"),
            id="unavailable",
        ),
        pytest.param(
            ov.OvershootUnavailable("503", endpoint=KA, retry_after=12.0),
            "OvershootUnavailable",
            False,
            12.0,
            (),
            id="unavailable-with-retry-after",
        ),
        pytest.param(
            ov.InvalidRequest("Overshoot create answered 422", endpoint=KA, status_code=422),
            "OvershootError",
            False,
            60.0,
            (OWNER, "answered 422", "please report it"),
            id="invalid-request",
        ),
        pytest.param(
            ov.UnexpectedResponse("a proxy page", endpoint=KA, status_code=200),
            "OvershootError",
            False,
            60.0,
            ("a proxy page",),
            id="unexpected-response",
        ),
        pytest.param(
            ov.NotFound("404", endpoint=KA, status_code=404),
            "OvershootError",
            False,
            60.0,
            (),
            id="other-overshoot-error",
        ),
        pytest.param(
            KubeError("Patch Pod ns/x failed: 400 Bad Request", status=400),
            dec.KUBERNETES_ERROR,
            False,
            5.0,
            (OWNER, "400 Bad Request"),
            id="kube-error",
        ),
        pytest.param(
            KubeUnavailable("Get Secret failed: ConnectionRefusedError"),
            dec.KUBERNETES_ERROR,
            False,
            5.0,
            ("ConnectionRefusedError",),
            id="kube-unavailable",
        ),
        pytest.param(
            ConflictError("409", status=409), dec.KUBERNETES_ERROR, False, 5.0, (), id="conflict"
        ),
        pytest.param(
            NotFoundError("404", status=404), dec.KUBERNETES_ERROR, False, 5.0, (), id="not-found"
        ),
        pytest.param(
            SecretProblem("ns/lobby: spec.apiKeySecretRef ... create it", reason="SecretNotFound"),
            "SecretNotFound",
            True,
            15.0,
            ("create it",),
            id="secret-problem",
        ),
        pytest.param(
            ValueError("secret-looking detail"),
            "InternalError",
            False,
            30.0,
            (OWNER, "ValueError"),
            id="unknown-exception",
        ),
    ],
)
def test_problem_from_error(
    err: Exception, reason: str, user_fixable: bool, retry_in: float, texts: tuple[str, ...]
) -> None:
    problem = dec.problem_from_error(err, owner=OWNER, api_key_ref=KEY_REF)
    assert (problem.reason, problem.user_fixable, problem.retry_in) == (
        reason,
        user_fixable,
        retry_in,
    )
    for text in texts:
        assert text in problem.message


def test_unknown_exception_message_does_not_repeat_its_text() -> None:
    problem = dec.problem_from_error(RuntimeError("token=eyJabc"), owner=OWNER, api_key_ref=KEY_REF)
    assert "eyJabc" not in problem.message


def test_user_fix_retry_is_well_under_a_minute_for_secrets() -> None:
    assert dec.USER_FIX_RETRY_SECONDS < 60
    assert dec.TRANSIENT_RETRY_SECONDS < dec.USER_FIX_RETRY_SECONDS


# ---- top_problem ------------------------------------------------------------------------


def problem(reason: str, *, fixable: bool) -> dec.Problem:
    return dec.Problem(reason, f"{reason} message", fixable, 1.0)


@pytest.mark.parametrize(
    ("problems", "expected"),
    [
        pytest.param({}, None, id="none"),
        pytest.param({"kube": problem("K", fixable=False)}, "K", id="only-one"),
        pytest.param(
            {"kube": problem("K", fixable=False), "create": problem("C", fixable=False)},
            "C",
            id="transient-by-source-order-not-insertion",
        ),
        pytest.param(
            {"spec": problem("S", fixable=False), "publisher": problem("P", fixable=True)},
            "P",
            id="user-fixable-beats-earlier-transient",
        ),
        pytest.param(
            {"create": problem("C", fixable=True), "secret": problem("Sec", fixable=True)},
            "Sec",
            id="two-user-fixable-by-source-order",
        ),
        pytest.param(
            {"other": problem("O", fixable=False), "kube": problem("K", fixable=False)},
            "K",
            id="unknown-source-after-known",
        ),
        pytest.param(
            {"other": problem("O", fixable=True), "spec": problem("S", fixable=False)},
            "O",
            id="unknown-source-user-fixable-beats-known-transient",
        ),
        pytest.param(
            {"zzz": problem("Z", fixable=False), "aaa": problem("A", fixable=False)},
            "Z",
            id="unknown-sources-in-insertion-order",
        ),
    ],
)
def test_top_problem(problems: dict[str, dec.Problem], expected: str | None) -> None:
    top = dec.top_problem(problems)
    assert (top.reason if top else None) == expected


def test_problem_sources_order() -> None:
    assert dec.PROBLEM_SOURCES == ("spec", "secret", "create", "lease", "publisher", "kube")


# ---- publisher_rejected -----------------------------------------------------------------


def test_publisher_rejected() -> None:
    err = KubeError("Create Pod ns/lobby-publisher failed: 403 Forbidden: violates PodSecurity")
    problem = dec.publisher_rejected(err, owner=OWNER, child="publisher Pod ns/lobby-publisher")
    assert problem.reason == "PublisherRejected"
    assert problem.user_fixable is True
    assert problem.retry_in == dec.USER_FIX_RETRY_SECONDS * 4
    for text in (OWNER, "lobby-publisher", "violates PodSecurity", "spec.publisher"):
        assert text in problem.message


# ---- frames_fresh -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age_ms", "fresh"),
    [
        pytest.param(None, False, id="no-frame"),
        pytest.param(0, True, id="now"),
        pytest.param(29_999, True, id="just-inside"),
        pytest.param(30_000, True, id="exactly-fresh-seconds"),
        pytest.param(30_001, False, id="just-outside"),
        pytest.param(3_600_000, False, id="an-hour-old"),
        pytest.param(-5_000, True, id="from-the-future-clock-skew"),
    ],
)
def test_frames_fresh(age_ms: int | None, fresh: bool) -> None:
    last = None if age_ms is None else NOW_MS - age_ms
    assert dec.frames_fresh(last, now=NOW, fresh_seconds=FRESH) is fresh


# ---- small helpers ----------------------------------------------------------------------


def test_time_helpers() -> None:
    assert dec.ms_to_datetime(None) is None
    assert dec.ms_to_datetime(NOW_MS) == NOW
    assert dec.rfc3339(None) is None
    assert dec.rfc3339(NOW.replace(microsecond=999_999)) == "2026-03-01T12:00:00Z"


@pytest.mark.parametrize(
    ("err", "reason", "texts"),
    [
        pytest.param(
            ov.SourceUnusable(
                "422",
                endpoint=ov.Endpoint.CREATE,
                status_code=422,
                detail="Could not connect to source url (check reachability and credentials)",
            ),
            "SourceUnreachable",
            ("could not connect to spec.source.rtsp", "refresh", "spec.delivery to Publisher"),
            id="unreachable",
        ),
        pytest.param(
            ov.SourceUnusable(
                "422",
                endpoint=ov.Endpoint.CREATE,
                status_code=422,
                detail="Source url must resolve to a public address",
            ),
            "SourceRefused",
            ("refused to pull spec.source.rtsp", "public address"),
            id="refused",
        ),
        pytest.param(
            ov.ServerPullUnsupported("sid-1"),
            "ServerPullUnsupported",
            ("https://api.example/v1", "/v1beta"),
            id="api-ignored-the-source",
        ),
    ],
)
def test_pull_refused(err: ov.OvershootError, reason: str, texts: tuple[str, ...]) -> None:
    problem = dec.pull_refused(
        err,  # type: ignore[arg-type]
        owner=OWNER,
        field="spec.source.rtsp",
        api_url="https://api.example/v1",
    )
    assert (problem.reason, problem.user_fixable) == (reason, True)
    assert problem.message.startswith(OWNER)
    for text in texts:
        assert text in problem.message, problem.message
