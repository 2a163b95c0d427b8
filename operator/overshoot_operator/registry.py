"""What this process knows about each OvershootStream: the watch's last word, the remote
stream it holds, the publisher Pod, and the bookkeeping of the controller.

Role: the stream registry (one `Entry` per resource key) and its tombstones. The watch
handlers write `Observed` and `PodFacts` here; everything else reads them. An entry is the
memory of one incarnation: it is forgotten the moment its resource is gone (deleted,
finalized, or answered 404), and a finalized uid is tombstoned for a while, so a late event
cannot bring a finished resource back to life.

Boundary: pure data, no I/O. Time values are the caller's (loop time for schedules).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from overshoot_operator import decisions as dec
from overshoot_operator import overshoot as ov
from overshoot_operator import resource as res
from overshoot_operator.delivery import Decision

Key = tuple[str, str]  # (namespace, name)

# How long a finalized (or vanished) uid is remembered: far longer than any watch lag.
TOMBSTONE_SECONDS = 600.0


_EPOCH = datetime.fromtimestamp(0, UTC)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Observed:
    """The resource as the watch last delivered it (only what the controller reads)."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    deletion_started: datetime | None
    finalizers: tuple[str, ...]
    spec: Mapping[str, Any]
    stream_id_annotation: str | None
    creating_annotation: str | None
    refresh_annotation: str | None
    status: Mapping[str, Any]

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def deleting(self) -> bool:
        return self.deletion_started is not None

    @property
    def owner(self) -> str:
        return f"{res.KIND} {self.namespace}/{self.name}"

    @property
    def has_finalizer(self) -> bool:
        return res.FINALIZER in self.finalizers

    def ref(self) -> dict[str, Any]:
        """Enough of the object for Events and ownerReferences."""
        return {
            "apiVersion": res.API_VERSION,
            "kind": res.KIND,
            "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid},
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Observed:
        meta = body.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        status = body.get("status")
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            resource_version=str(meta.get("resourceVersion") or ""),
            # An unreadable timestamp counts as long ago: deletion then gives up on an
            # unreachable API at once rather than never.
            deletion_started=(
                (_parse_time(meta.get("deletionTimestamp")) or _EPOCH)
                if meta.get("deletionTimestamp")
                else None
            ),
            finalizers=tuple(meta.get("finalizers") or ()),
            spec=dict(body.get("spec") or {}),
            stream_id_annotation=annotations.get(res.STREAM_ID_ANNOTATION),
            creating_annotation=annotations.get(res.CREATING_ANNOTATION),
            refresh_annotation=annotations.get(res.REFRESH_ANNOTATION),
            status=dict(status) if isinstance(status, Mapping) else {},
        )

    def differs_for_controller(self, other: Observed | None) -> bool:
        """Whether this version asks for work the previous one did not: a status-only
        change (usually our own write) does not."""
        if other is None:
            return True
        return (
            self.uid != other.uid
            or self.generation != other.generation
            or self.deletion_started != other.deletion_started
            or self.finalizers != other.finalizers
            or self.stream_id_annotation != other.stream_id_annotation
            or self.creating_annotation != other.creating_annotation
            or self.refresh_annotation != other.refresh_annotation
        )


@dataclass(frozen=True, slots=True)
class PodFacts:
    """The publisher Pod as the Pod watch last delivered it."""

    uid: str
    phase: str | None
    ready: bool
    deleting: bool
    config_hash: str | None
    owner_uid: str | None
    # The stream the Pod was last told of (PUBLISH_STREAM_ANNOTATION).
    publish_stream: str | None = None
    # Why the publisher container is not running, as the kubelet reports it: its last exit
    # with the termination message, or why it cannot start (see `container_failure`).
    failure: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, hash_annotation: str) -> PodFacts:
        meta = body.get("metadata") or {}
        status = body.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        owner_uid = next(
            (o.get("uid") for o in meta.get("ownerReferences") or [] if o.get("kind") == res.KIND),
            None,
        )
        return cls(
            uid=meta.get("uid", ""),
            phase=status.get("phase"),
            ready=ready,
            deleting=bool(meta.get("deletionTimestamp")),
            config_hash=(meta.get("annotations") or {}).get(hash_annotation),
            owner_uid=owner_uid,
            publish_stream=(meta.get("annotations") or {}).get(res.PUBLISH_STREAM_ANNOTATION),
            failure=container_failure(status.get("containerStatuses") or []),
        )

    @property
    def lost(self) -> bool:
        """Finished or failed for good: a bare Pod is never restarted by anyone else."""
        return self.phase in ("Failed", "Succeeded")


# The kubelet's reasons for a container it cannot start at all: each needs a fix (the image,
# its pull policy or secret, a referenced Secret), not a wait.
_START_FAILURES = frozenset(
    {
        "ErrImageNeverPull",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
# A termination message is the publisher's own words (it never writes a token or a
# password there) or its last log lines; status keeps the start of it.
_MESSAGE_LIMIT = 400


def container_failure(statuses: list[Mapping[str, Any]]) -> str | None:
    """Why the (single) publisher container is not publishing, from the Pod's
    `containerStatuses`, in the kubelet's words; None once it is ready, or before it
    ever ran. A restarted container keeps its last failure until it is ready again, so a
    crash loop reads the same between its restarts."""
    for container in statuses:
        if container.get("ready"):
            continue
        state = container.get("state") or {}
        restarts = int(container.get("restartCount") or 0)
        terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated")
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in _START_FAILURES:
            detail = str(waiting.get("message") or "").strip()
            return _clip(f"publisher container cannot start: {waiting['reason']}: {detail}")
        if not terminated or terminated.get("exitCode") == 0:
            continue
        message = " ".join(str(terminated.get("message") or "").split())
        text = f"publisher exited with code {terminated.get('exitCode')}"
        if restarts:
            text += f" (restarted {restarts} time{'' if restarts == 1 else 's'}"
            text += f", {waiting['reason']})" if waiting.get("reason") else ")"
        return _clip(f"{text}: {message}" if message else text)
    return None


def _clip(text: str) -> str:
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


@dataclass(frozen=True, slots=True)
class DesiredPod:
    """The publisher Pod rendered for one generation of the spec, and its config hash."""

    generation: int
    manifest: dict[str, Any]
    config_hash: str


@dataclass(slots=True)
class Held:
    """A remote stream this process holds the lease of, for one resource incarnation."""

    stream_id: str
    uid: str
    api_key: SecretStr
    expires_at_ms: int
    # Whether the id is written down on the resource (annotation and status: invariant 2).
    recorded: bool = True
    # The newest token, not yet in the publish Secret.
    publish: ov.PublishInfo | None = None
    # The stream id the publish Secret is known to carry (None: not known, read it).
    secret_stream_id: str | None = None
    # Loop time of the next keepalive.
    keepalive_at: float = 0.0
    last_keepalive: datetime | None = None
    # Who publishes into it: a publisher Pod, or Overshoot pulling the camera itself.
    delivery: res.Delivery = "Publisher"
    # The region that serves it (sent with every call for it), once known.
    region: str | None = None
    # What it was created with (`EffectiveSpec.stream_revision`); None: not known (a stream
    # taken over from a status that did not say), which no spec change replaces.
    revision: str | None = None
    # Loop time at which this process took it (created, adopted or resumed).
    acquired_at: float = 0.0


@dataclass(slots=True)
class Media:
    """What Overshoot last said about the frames of the held stream."""

    stream_id: str | None = None
    state: ov.StreamState | None = None
    last_frame_at_ms: int | None = None
    ever_had_frames: bool = False
    polls_without_frames: int = 0
    # ServerPull: when Overshoot last pulled a frame from the camera (GET's last_pull).
    last_pull_ms: int | None = None


@dataclass(slots=True)
class Fetched:
    """A poll's answer waiting to be taken in by the next `process`."""

    stream_id: str
    state: ov.StreamState | None
    ended: bool


@dataclass(slots=True)
class Entry:
    key: Key
    observed: Observed | None = None
    held: Held | None = None
    pod: PodFacts | None = None
    media: Media = field(default_factory=Media)
    fetched: Fetched | None = None
    # What stops progress now, by where it comes from (decisions.PROBLEM_SOURCES), as a
    # condition reason and message; status shows the most pressing one.
    problems: dict[str, dec.Problem] = field(default_factory=dict)
    # Why the remote stream ended when onRemoteEnd is Fail: (reason, message, generation).
    failed: tuple[str, str, int] | None = None
    failed_end_reason: str | None = None
    recreations: int | None = None
    # The last conditions written (lastTransitionTime moves only on a status change).
    conditions: list[res.Condition] = field(default_factory=list)
    status_digest: int | None = None
    # The generation whose Secret and Pod are in place (observedGeneration in status).
    synced_generation: int | None = None
    # Loop time before which no create (or resume) is tried again, and the failures so far.
    create_after: float | None = None
    create_failures: int = 0
    # Loop time at which this pass asked to be processed again (reset every pass).
    wake_at: float | None = None
    # The creating mark already announced as a possible leak.
    leak_announced: str | None = None
    # The reason of the problem last announced by an Event.
    announced: str | None = None
    # Whether suspension already removed the Pod and the Secret.
    children_removed: bool = False
    # When the watch said the resource was gone (wall time), while its stream is released.
    vanished_at: datetime | None = None
    # The phase status last said (for the metrics).
    phase: str | None = None
    # The refresh annotation value already acted on.
    refresh_seen: str | None = None
    # The effective spec parsed for a generation (a parse per event is wasted CPU).
    spec_cache: tuple[int, res.EffectiveSpec | str] | None = None
    # The Pod rendered for the current generation (rendering per pass is wasted CPU).
    pod_cache: DesiredPod | None = None
    # The generation whose publisher Pod admission accepted (a dry run before a create).
    admitted_generation: int | None = None
    # Since when the cluster refuses the publisher while no Pod publishes (wall time).
    rejected_since: datetime | None = None
    # How this generation's video is delivered (delivery.Decision; Auto may resolve DNS,
    # and falls back to Publisher for the generation when Overshoot cannot pull).
    delivery_cache: tuple[int, Decision] | None = None
    # The pull revision Overshoot refused (422): not created again until it changes.
    blocked_pull: str | None = None
    # Since when the held stream is being replaced (delivery or pulled source changed)
    # while its DELETE fails (wall time).
    replacing_since: datetime | None = None
    # Whether a pulled stream's Pod and Secret (from an earlier Publisher delivery) are gone.
    pull_children_removed: bool = False
    # The stream this process last released on purpose: status and the annotation may
    # still name it until their next write, and it must never be taken over again.
    released_stream_id: str | None = None
    # The generation, and the loop time, of the last read of the pull revision's inputs.
    revision_generation: int | None = None
    revision_checked_at: float = 0.0
    # Pulled streams Overshoot ended in a row because their camera's stream ended.
    source_ends: int = 0
    # No stream while the publisher proves its source (a stream no frame ever reached was
    # released); how many such releases in a row; whether the standby Secret is written.
    standby: bool = False
    standby_rounds: int = 0
    standby_secret: bool = False

    @property
    def owner(self) -> str:
        return f"{res.KIND} {self.key[0]}/{self.key[1]}"

    def new_incarnation(self) -> None:
        """The resource was deleted and created again under the same name: nothing known
        about the old one applies (its Pod, if any, is told apart by its owner uid)."""
        fresh = Entry(self.key, observed=self.observed, pod=self.pod)
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))

    def wake(self, at: float) -> None:
        """Ask for another pass at loop time `at` (the earliest request of a pass wins)."""
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)

    def set_problem(self, source: str, problem: dec.Problem | None) -> None:
        if problem is None:
            self.problems.pop(source, None)
        else:
            self.problems[source] = problem


class Registry:
    def __init__(self) -> None:
        self._entries: dict[Key, Entry] = {}
        # Finalized or vanished uids, with the loop time until which they are ignored.
        self._tombstones: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def get(self, key: Key) -> Entry | None:
        return self._entries.get(key)

    def entry(self, key: Key) -> Entry:
        found = self._entries.get(key)
        if found is None:
            found = self._entries[key] = Entry(key)
        return found

    def held(self) -> Iterator[Entry]:
        return (e for e in list(self._entries.values()) if e.held is not None)

    # ---- what the watches say ----------------------------------------------------------

    def observe(self, observed: Observed, *, now: float) -> bool:
        """Take in a watch event's object; True if it asks for processing."""
        if self.tombstoned(observed.uid, now=now):
            return False
        entry = self.entry(observed.key)
        previous = entry.observed
        entry.observed = observed
        return observed.differs_for_controller(previous)

    def observe_gone(self, key: Key, uid: str | None) -> bool:
        """The watch said the resource was deleted; True if there is anything to do."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        if uid and entry.observed is not None and entry.observed.uid != uid:
            return False  # an older incarnation's DELETED after the successor appeared
        entry.observed = None
        return True

    def observe_pod(self, key: Key, pod: PodFacts | None) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            if pod is None:
                return False
            entry = self.entry(key)
        previous = entry.pod
        entry.pod = pod
        return previous != pod

    # ---- forgetting --------------------------------------------------------------------

    def forget(self, key: Key, *, uid: str | None, now: float) -> None:
        """Drop everything about `key`; tombstone `uid` so late events are ignored."""
        self._entries.pop(key, None)
        if uid:
            self._tombstones[uid] = now + TOMBSTONE_SECONDS
        if len(self._tombstones) > 1024:
            self._tombstones = {u: t for u, t in self._tombstones.items() if t > now}

    def tombstoned(self, uid: str, *, now: float) -> bool:
        until = self._tombstones.get(uid)
        if until is None:
            return False
        if until <= now:
            del self._tombstones[uid]
            return False
        return True
