"""Pure decisions: what status says, and how each error becomes a condition and a retry.

Role: given facts about one OvershootStream (spec, what the operator holds, what Overshoot
reported, what went wrong), compute phase and conditions, and map errors of both remote
boundaries to a reason a user can act on and a retry delay. No I/O and no clock reads:
`now` is passed in, so every rule is unit-tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from overshoot_operator import overshoot as ov
from overshoot_operator import resource as res
from overshoot_operator.kube import KubeError, SecretProblem


@dataclass(frozen=True)
class Problem:
    """Something that stops progress, as a condition reason and message."""

    reason: str
    message: str
    # A user must change something (key, credits, a Secret): retried slowly.
    user_fixable: bool
    # Seconds until the operator tries again.
    retry_in: float


# Retry cadence of problems a user must fix. Short enough that a fixed Secret is noticed in
# well under a minute (issue 4: "without waiting minutes"), long enough to cost nothing.
USER_FIX_RETRY_SECONDS = 15.0
TRANSIENT_RETRY_SECONDS = 5.0


# The reason of a failed Kubernetes call (transient; a later success clears it).
KUBERNETES_ERROR = "KubernetesError"

# Where a problem comes from, most fundamental first: status shows the first problem a
# user must fix, else the first one (a missing Secret explains a failed create, not the
# other way round).
PROBLEM_SOURCES = ("spec", "secret", "create", "lease", "publisher", "kube")


def top_problem(problems: dict[str, Problem]) -> Problem | None:
    """The problem status reports among those of each source."""
    ordered = [problems[s] for s in PROBLEM_SOURCES if s in problems]
    ordered += [p for s, p in problems.items() if s not in PROBLEM_SOURCES]
    return next((p for p in ordered if p.user_fixable), ordered[0] if ordered else None)


def publisher_rejected(err: KubeError, *, owner: str, child: str) -> Problem:
    """The API server or an admission plugin refused the publisher Pod or its Secret (Pod
    Security, a ResourceQuota, a LimitRange, a webhook): only a change of spec or of the
    namespace's policy helps."""
    return Problem(
        "PublisherRejected",
        f"{owner}: the cluster refused {child}: {err}; change spec.publisher or "
        "spec.source, or the namespace's policy",
        True,
        USER_FIX_RETRY_SECONDS * 4,
    )


# The Ready reason while no stream is held because no frame of the last one ever reached
# Overshoot, until the publisher proves its source.
WAITING_FOR_SOURCE = "WaitingForSource"


def waiting_for_source(
    *, owner: str, stream_id: str, bound: float, failure: str | None, later: str
) -> Problem:
    """A publisher stream that no frame reached was released: the user's camera (or the
    path from the publisher to LiveKit) needs a look; nothing is paid for meanwhile."""
    said = f"the publisher says: {failure}" if failure else "the publisher reports no failure"
    message = (
        f"{owner}: released remote stream {stream_id}: no frame reached Overshoot within "
        f"{bound:.0f}s of its creation ({said}). No stream is paid for until the source "
        "delivers: the publisher Pod keeps trying it (the kubelet restarts it with backoff) "
        f"and a new stream is created once the Pod is Ready{later}; check spec.source and "
        "the publisher's logs"
    )
    return Problem("WaitingForSource", message, True, bound)


# A camera Overshoot refused is not created again until what it pulls changes; its
# credentials Secret is read again this often to notice a change.
PULL_RECHECK_SECONDS = USER_FIX_RETRY_SECONDS


def pull_refused(
    err: ov.SourceUnusable | ov.ServerPullUnsupported, *, owner: str, field: str, api_url: str
) -> Problem:
    """Overshoot will not pull the camera of an explicit ServerPull: the same create cannot
    succeed until the source, its credentials, the region or the network change."""
    until = (
        f"not tried again until {field}, its credentials Secret or spec.region change (or "
        f"the resource is annotated {res.REFRESH_ANNOTATION}=<new value> once the camera is "
        "reachable); or set spec.delivery to Publisher to pull it from inside the cluster"
    )
    if isinstance(err, ov.ServerPullUnsupported):
        message = (
            f"{owner}: the Overshoot API at {api_url} ignored the camera source (it answered "
            "with an ordinary stream, released again): camera sources need a /v1beta API URL "
            "(the operator's OVERSHOOT_API_URL); or set spec.delivery to Publisher"
        )
        return Problem("ServerPullUnsupported", message, True, PULL_RECHECK_SECONDS)
    said = err.detail or err.message
    if err.unreachable:
        message = f"{owner}: Overshoot could not connect to {field} ({said}); {until}"
        return Problem("SourceUnreachable", message, True, PULL_RECHECK_SECONDS)
    message = f"{owner}: Overshoot refused to pull {field} ({said}); {until}"
    return Problem("SourceRefused", message, True, PULL_RECHECK_SECONDS)


def problem_from_error(err: Exception, *, owner: str, api_key_ref: str) -> Problem:
    """The one mapping of boundary errors to condition reasons (invariant 8)."""
    if isinstance(err, SecretProblem):
        return Problem(err.reason, str(err), True, USER_FIX_RETRY_SECONDS)
    if isinstance(err, ov.Unauthorized):
        return Problem(
            "ApiKeyRejected",
            f"{owner}: Overshoot rejected the API key in {api_key_ref} "
            f"({err.status_code}); put a valid, assigned key there",
            True,
            USER_FIX_RETRY_SECONDS * 4,
        )
    if isinstance(err, ov.PaymentRequired):
        return Problem(
            "InsufficientCredits",
            f"{owner}: Overshoot reports insufficient credits for the key in {api_key_ref} "
            "(402); add credits to the account",
            True,
            USER_FIX_RETRY_SECONDS * 4,
        )
    if isinstance(err, ov.WrongRegion):
        message = (
            f"{owner}: Overshoot answered with a region error ({err.detail or err.message}); "
            "set spec.region to a region the account's streams are served from, or remove it"
        )
        return Problem("RegionRejected", message, True, USER_FIX_RETRY_SECONDS * 4)
    if isinstance(err, ov.RateLimited):
        wait = err.retry_after if err.retry_after is not None else 30.0
        return Problem(
            "RateLimited",
            f"{owner}: Overshoot refused with 429 (rate or stream limit); retrying in {wait:.0f}s",
            False,
            wait,
        )
    if isinstance(err, ov.OvershootUnavailable):
        return Problem(
            "OvershootUnavailable",
            f"{owner}: {err.message}; retrying",
            False,
            err.retry_after or TRANSIENT_RETRY_SECONDS,
        )
    if isinstance(err, ov.OvershootError):
        return Problem(
            "OvershootError",
            f"{owner}: {err.message}; this looks like an API change or a bug, please report it",
            False,
            USER_FIX_RETRY_SECONDS * 4,
        )
    if isinstance(err, KubeError):
        return Problem(KUBERNETES_ERROR, f"{owner}: {err}", False, TRANSIENT_RETRY_SECONDS)
    return Problem("InternalError", f"{owner}: {type(err).__name__}", False, 30.0)


@dataclass(frozen=True)
class Facts:
    """Everything status is derived from, gathered by the reconciler."""

    generation: int | None
    suspended: bool
    failed_reason: str | None  # onRemoteEnd: Fail happened, or the spec is unusable
    failed_message: str | None
    stream_id: str | None
    lease_held: bool
    last_frame_at_ms: int | None
    ever_had_frames: bool
    pod_ready: bool | None
    problem: Problem | None
    # Why the publisher container is not publishing, in the kubelet's words (a crash with
    # its termination message, an image that cannot be pulled), if it is not.
    publisher_failure: str | None = None
    # Overshoot pulls the camera itself (ServerPull): the frame times above are its pulls
    # (GET's last_pull) and there is no publisher.
    pulled: bool = False


def frames_fresh(last_frame_at_ms: int | None, *, now: datetime, fresh_seconds: float) -> bool:
    """Invariant 7: `Publishing` only when Overshoot saw a frame recently."""
    if last_frame_at_ms is None:
        return False
    age = now.timestamp() - last_frame_at_ms / 1000.0
    return age <= fresh_seconds


def summarize(
    facts: Facts,
    conditions: list[res.Condition],
    *,
    now: datetime,
    fresh_seconds: float,
) -> tuple[res.Phase, list[res.Condition]]:
    """Phase and conditions (Ready, StreamActive, Publishing) from the facts."""
    gen = facts.generation
    T = res.ConditionType

    def put(type_: str, status: res.ConditionStatus, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = res.set_condition(
            conditions, type_, status, reason, message, now=now, observed_generation=gen
        )

    if facts.suspended:
        put(T.STREAM_ACTIVE, "False", "Suspended", "spec.suspend is true: no remote stream")
        put(T.PUBLISHING, "False", "Suspended", "spec.suspend is true: no publisher")
        put(T.READY, "False", "Suspended", "Suspended by spec.suspend; set it to false to resume")
        return "Suspended", conditions

    if facts.failed_reason is not None:
        message = facts.failed_message or facts.failed_reason
        put(T.STREAM_ACTIVE, "False", facts.failed_reason, message)
        put(T.PUBLISHING, "False", facts.failed_reason, message)
        put(T.READY, "False", facts.failed_reason, message)
        return "Failed", conditions

    fresh = frames_fresh(facts.last_frame_at_ms, now=now, fresh_seconds=fresh_seconds)
    failing: str | None = None
    if facts.lease_held and not fresh and facts.publisher_failure:
        failing = (
            f"The publisher is failing: {facts.publisher_failure}; `kubectl describe pod` and "
            "`kubectl logs --previous` on the publisher Pod show more"
        )
    if facts.lease_held:
        put(T.STREAM_ACTIVE, "True", "LeaseHeld", f"Stream {facts.stream_id} is active")
    elif facts.problem is not None:
        put(T.STREAM_ACTIVE, "False", facts.problem.reason, facts.problem.message)
    else:
        put(T.STREAM_ACTIVE, "False", "Creating", "Creating the remote stream")

    if fresh:
        put(T.PUBLISHING, "True", "FramesArriving", "Overshoot reports frames arriving")
    elif failing is not None:
        put(T.PUBLISHING, "False", "PublisherFailing", failing)
    elif facts.ever_had_frames and facts.pulled:
        # The stream is fine: Overshoot reconnects a dropped camera by itself.
        put(T.PUBLISHING, "False", "SourceStale", _stale_message(facts, fresh_seconds))
    elif facts.ever_had_frames:
        put(
            T.PUBLISHING,
            "False",
            "FramesStopped",
            f"No frame reached Overshoot in the last {fresh_seconds:.0f}s; "
            "check the publisher Pod's logs and the source",
        )
    elif facts.lease_held and facts.pulled:
        put(T.PUBLISHING, "False", "WaitingForFrames", "Waiting for Overshoot's first pull")
    elif facts.lease_held:
        waiting = "publisher Pod not ready yet" if facts.pod_ready is False else "no frame yet"
        put(T.PUBLISHING, "False", "WaitingForFrames", f"Waiting for frames: {waiting}")
    else:
        put(T.PUBLISHING, "False", "NoStream", "No remote stream to publish into")

    if facts.problem is not None and (not facts.lease_held or facts.problem.user_fixable):
        put(T.READY, "False", facts.problem.reason, facts.problem.message)
        phase: res.Phase = "Degraded" if facts.lease_held else "Pending"
        return phase, conditions
    if not facts.lease_held:
        put(T.READY, "False", "Creating", "Creating the remote stream")
        return "Pending", conditions
    if failing is not None:
        put(T.READY, "False", "PublisherFailing", failing)
        return "Degraded", conditions
    if fresh:
        if facts.problem is not None:
            # A transient keepalive failure while frames flow: still serving, say so.
            put(T.READY, "True", "Publishing", f"Publishing; {facts.problem.message}")
        else:
            put(T.READY, "True", "Publishing", "Frames are reaching Overshoot")
        return "Publishing", conditions
    if facts.ever_had_frames and facts.pulled:
        put(T.READY, "False", "SourceStale", _stale_message(facts, fresh_seconds))
        return "Degraded", conditions
    if facts.ever_had_frames:
        put(T.READY, "False", "FramesStopped", "Frames stopped reaching Overshoot")
        return "Degraded", conditions
    put(T.READY, "False", "WaitingForFrames", "Stream created; waiting for the first frames")
    return "Provisioning", conditions


def _stale_message(facts: Facts, fresh_seconds: float) -> str:
    since = rfc3339(ms_to_datetime(facts.last_frame_at_ms)) or "?"
    return (
        f"Overshoot has pulled no frame from the camera for over {fresh_seconds:.0f}s "
        f"(last at {since}); the stream is kept and Overshoot reconnects by itself "
        "(backing off up to 30s); check that the camera is up and reachable from the internet"
    )


def ms_to_datetime(ms: int | None) -> datetime | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
