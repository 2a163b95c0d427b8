"""The status of an OvershootStream: built from what the registry knows, written by one writer.

Role: the only writer of `.status` (invariant: one writer per field). `build_status()` is
pure: the registry entry, the resource as observed and `now` in, the status patch out.
`StatusWriter.write()` sends it only when it differs from the last one sent for that
incarnation, and only to that incarnation (the uid is a precondition): a status meant for a
resource that was deleted and created again under the same name is refused, not merged in.

What status says (../shared/design.md):
- `observedGeneration` is the generation whose children (Secret, Pod) exist as that
  generation wants them; a spec change shows the old generation until its Pod is in place,
  so Ready never claims the new spec too early.
- `publisherPod` names a Pod only when the Pod watch has seen it.
- `Publishing` only from Overshoot's frame times (invariant 7).

Boundary: kube.py's status patch; everything else is pure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from overshoot_operator import decisions as dec
from overshoot_operator import resource as res
from overshoot_operator.kube import ConflictError, Kube, KubeError, NotFoundError
from overshoot_operator.registry import Entry, Observed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class View:
    """How the controller sees the resource right now, beyond the entry."""

    suspended: bool = False
    invalid: str | None = None  # the message of an unusable spec
    deleting: bool = False


def delivery_of(entry: Entry, observed: Observed) -> res.Delivery | None:
    """The delivery of the held stream, else the one this generation is headed for."""
    if entry.held is not None:
        return entry.held.delivery
    cached = entry.delivery_cache
    if cached is not None and cached[0] == observed.generation:
        return cached[1].delivery
    return None


def facts_of(entry: Entry, observed: Observed, view: View) -> dec.Facts:
    held = entry.held
    pulled = held is not None and held.delivery == "ServerPull"
    failed = entry.failed
    failed_reason: str | None = None
    failed_message: str | None = None
    if view.invalid is not None:
        failed_reason, failed_message = "InvalidSpec", view.invalid
    elif failed is not None:
        failed_reason, failed_message = failed[0], failed[1]
    return dec.Facts(
        generation=observed_generation(entry, observed, view),
        suspended=view.suspended,
        failed_reason=failed_reason,
        failed_message=failed_message,
        stream_id=held.stream_id if held else None,
        lease_held=held is not None,
        last_frame_at_ms=(
            None
            if held is None
            else entry.media.last_pull_ms
            if pulled
            else entry.media.last_frame_at_ms
        ),
        ever_had_frames=(
            held is not None
            and (entry.media.last_pull_ms is not None if pulled else entry.media.ever_had_frames)
        ),
        pod_ready=(
            None
            if pulled
            else entry.pod.ready
            if entry.pod is not None
            else (False if held else None)
        ),
        problem=dec.top_problem(entry.problems),
        publisher_failure=entry.pod.failure if entry.pod is not None and not pulled else None,
        pulled=pulled,
    )


def observed_generation(entry: Entry, observed: Observed, view: View) -> int:
    """The generation status speaks for: the current one once its children are in place
    (or when there are none to place), else the last one that got its children."""
    if entry.held is None or view.suspended or view.invalid is not None:
        return observed.generation
    if entry.synced_generation is None:
        # Nothing synced yet in this process: a resumed resource keeps what status said.
        stored = observed.status.get("observedGeneration")
        return stored if isinstance(stored, int) else observed.generation
    return entry.synced_generation


def build_status(
    entry: Entry,
    observed: Observed,
    view: View,
    *,
    now: datetime,
    fresh_seconds: float,
) -> tuple[dict[str, Any], list[res.Condition]]:
    """The whole status (None: absent) and the conditions it carries (kept by the caller for the next
    build, so lastTransitionTime moves only when a condition's status changes)."""
    facts = facts_of(entry, observed, view)
    phase, conditions = dec.summarize(facts, entry.conditions, now=now, fresh_seconds=fresh_seconds)
    if view.deleting:
        phase = "Deleting"
    held = entry.held
    published = held is not None and held.delivery == "Publisher"
    patch: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": facts.generation,
        "conditions": [res.to_json(c) for c in conditions],
        "recreations": entry.recreations or 0,
        "streamId": held.stream_id if held else None,
        "delivery": delivery_of(entry, observed),
        "region": held.region if held else None,
        "streamRevision": held.revision if held else None,
        "secretName": res.publish_secret_name(observed.name) if published else None,
        "publisherPod": res.publisher_pod_name(observed.name) if published and entry.pod else None,
        "expiresAt": dec.rfc3339(dec.ms_to_datetime(held.expires_at_ms)) if held else None,
        "lastKeepaliveTime": dec.rfc3339(held.last_keepalive) if held else None,
    }
    if held is not None and held.last_keepalive is None:
        # Resumed without a call: keep the time the previous process wrote.
        patch["lastKeepaliveTime"] = observed.status.get("lastKeepaliveTime")
    state = entry.media.state if held else None
    if state is not None and (
        state.last_frame_index is not None or state.end_reason or state.last_pull is not None
    ):
        patch["stream"] = {
            "recentFps": state.recent_fps,
            "lastFrameIndex": state.last_frame_index,
            "lastFrameAt": dec.rfc3339(dec.ms_to_datetime(state.last_frame_at_ms)),
            "firstFrameAt": dec.rfc3339(dec.ms_to_datetime(state.first_frame_at_ms)),
            "streamTimeMs": state.stream_time_ms,
            "endReason": state.end_reason,
        }
        if state.last_pull is not None:
            patch["stream"]["lastPullAt"] = dec.rfc3339(dec.ms_to_datetime(state.last_pull))
    elif entry.failed is not None and entry.failed_end_reason is not None:
        patch["stream"] = {"endReason": entry.failed_end_reason}
    elif held is None:
        patch["stream"] = None
    return patch, conditions


class WriteResult(Enum):
    WRITTEN = "written"
    UNCHANGED = "unchanged"
    GONE = "gone"  # the incarnation no longer exists
    FAILED = "failed"


class StatusWriter:
    def __init__(self, kube: Kube, *, fresh_seconds: float) -> None:
        self._kube = kube
        self._fresh_seconds = fresh_seconds

    async def write(
        self, entry: Entry, observed: Observed, view: View, *, now: datetime
    ) -> WriteResult:
        patch, conditions = build_status(
            entry, observed, view, now=now, fresh_seconds=self._fresh_seconds
        )
        # A pass that learned nothing new writes nothing: at thousands of streams,
        # identical status patches were most of the operator's writes (bench/operator_scale).
        digest = _digest(patch)
        if digest == entry.status_digest:
            return WriteResult.UNCHANGED
        try:
            await self._kube.replace_stream_status(
                observed.namespace, observed.name, _without_nulls(patch), uid=observed.uid
            )
        except (NotFoundError, ConflictError):
            return WriteResult.GONE
        except KubeError as err:
            if err.status == 422:
                return WriteResult.GONE  # the uid test failed: a successor under the name
            logger.warning("Status write for %s failed: %s", observed.owner, err)
            return WriteResult.FAILED
        entry.conditions = conditions
        entry.status_digest = digest
        entry.phase = patch["phase"]
        return WriteResult.WRITTEN


def _without_nulls(value: Any) -> Any:
    """The status as stored: a field that says nothing is absent, not null."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _digest(patch: Mapping[str, Any]) -> int:
    """Equal for equal status patches (a 64-bit hash: a collision skips one write, and
    the next change writes again)."""
    return hash(json.dumps(patch, sort_keys=True, separators=(",", ":")))
