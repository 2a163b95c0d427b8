"""An OvershootStream as the plugin reads it: a tolerant model of the raw object.

Role: the fields `get` shows and `snapshot` needs, from the object the API server returns.
Its status is written by an operator that may be older or newer than this plugin (the
`delivery`, `region` and `stream.lastPullAt` fields are recent), so nothing here may fail
on a status that lacks a field, has an unknown one, or holds a value of another type: such
a field reads as absent. `overshoot_operator.resource.parse_status` is strict by design
(it checks what the operator writes); this model is its lenient reader's counterpart.

Boundary: pure pydantic, no I/O. Names (API coordinates, condition types, the API-key
reference model) come from `overshoot_operator.resource`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic.alias_generators import to_camel

from overshoot_operator import resource as res

__all__ = [
    "NO_FRAMES_REASONS",
    "SERVER_PULL",
    "Condition",
    "MediaStatus",
    "ObservedStream",
]

T = TypeVar("T")

# status.delivery: who sends the video into the room. Publisher (a publisher Pod) is what
# a stream without the field means.
PUBLISHER: Final = "Publisher"
SERVER_PULL: Final = "ServerPull"

# Ready reasons the operator writes (decisions.summarize) while no frame reaches
# Overshoot: there is no picture to take.
NO_FRAMES_REASONS: Final = frozenset(
    {"WaitingForFrames", "FramesStopped", "PublisherFailing", "SourceStale"}
)


def _or_none(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError:
        return None


# A field that reads as None when it holds something this plugin cannot understand.
Lenient = Annotated[T | None, WrapValidator(_or_none)]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class Condition(_Model):
    type: str
    status: str
    reason: Lenient[str] = None
    message: Lenient[str] = None


class MediaStatus(_Model):
    """status.stream: what Overshoot reports about the frames it receives."""

    recent_fps: Lenient[float] = None
    last_frame_at: Lenient[datetime] = None
    # v1beta camera sources: the last frame Overshoot pulled itself (ServerPull).
    last_pull_at: Lenient[datetime] = None


class _Status(_Model):
    phase: Lenient[str] = None
    stream_id: Lenient[str] = None
    delivery: Lenient[str] = None
    region: Lenient[str] = None
    stream: Lenient[MediaStatus] = None
    conditions: Lenient[list[Lenient[Condition]]] = None


class _Spec(_Model):
    api_key_secret_ref: Lenient[res.SecretKeyRef] = None


class _Metadata(_Model):
    name: str
    namespace: str = ""


class ObservedStream(_Model):
    """One OvershootStream as read: its name, the API-key reference and its status."""

    namespace: str
    name: str
    api_key_secret_ref: res.SecretKeyRef | None = None
    phase: str | None = None
    stream_id: str | None = None
    delivery: str | None = None
    region: str | None = None
    media: MediaStatus = Field(default_factory=MediaStatus)
    conditions: tuple[Condition, ...] = ()

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ObservedStream:
        """The model of a raw object (`CustomObjectsApi` dict); never fails on its status."""
        metadata = _Metadata.model_validate(obj.get("metadata") or {})
        raw_spec, raw_status = obj.get("spec"), obj.get("status")
        spec = _Spec.model_validate(raw_spec if isinstance(raw_spec, Mapping) else {})
        status = _Status.model_validate(raw_status if isinstance(raw_status, Mapping) else {})
        return cls(
            namespace=metadata.namespace,
            name=metadata.name,
            api_key_secret_ref=spec.api_key_secret_ref,
            phase=status.phase,
            stream_id=res.parse_stream_id(status.stream_id),
            delivery=status.delivery,
            region=status.region or None,
            media=status.stream or MediaStatus(),
            conditions=tuple(c for c in status.conditions or () if c is not None),
        )

    @property
    def ref(self) -> str:
        """How messages name it: `OvershootStream cams/lobby`."""
        return f"{res.KIND} {self.namespace}/{self.name}"

    @property
    def ready(self) -> Condition | None:
        return next((c for c in self.conditions if c.type == res.ConditionType.READY), None)

    @property
    def not_ready_reason(self) -> str:
        """The Ready condition's reason when Ready is not True, else ''."""
        ready = self.ready
        if ready is None or ready.status == "True":
            return ""
        return ready.reason or ""

    @property
    def server_pull(self) -> bool:
        return self.delivery == SERVER_PULL

    @property
    def last_media_at(self) -> datetime | None:
        """When the last frame arrived: pulled by Overshoot (ServerPull), else received."""
        if self.server_pull and self.media.last_pull_at is not None:
            return self.media.last_pull_at
        return self.media.last_frame_at
