"""The OvershootStream resource in Python: typed spec and status, conditions, defaults, names.

Role: the only module that defines the CRD's models (deploy/crds/ is the schema the API
server enforces; these models mirror it and a unit test keeps the two in step). Also home of
the resource's naming contract: API coordinates, annotation keys, the finalizer, the names
of owned objects, and the defaulting that the CRD deliberately leaves out (no `default:` in
the schema, so GitOps tools see no drift): `effective_spec()`.

Boundary: pure pydantic, no I/O, no clock reads (callers pass `now`). The source and video
models come from `overshoot_publisher.config`, the one definition shared with the publisher;
this module imports them and never the other way round.

Wire format is camelCase (`model_dump(by_alias=True)`, see `to_json()`); Python is
snake_case. Reads ignore unknown fields, so a newer CRD never breaks an older operator.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from overshoot_publisher.config import (
    CredentialsSecretRef,
    FileSource,
    FileVolume,
    RtspSource,
    Source,
    TestPatternSource,
    UrlSource,
    Video,
)

# The shared source and video models are re-exported: they are part of the spec's API.
__all__ = [
    "API_VERSION",
    "CRD_NAME",
    "CREATING_ANNOTATION",
    "FINALIZER",
    "GROUP",
    "KIND",
    "MAX_NAME_LENGTH",
    "PHASES",
    "PLURAL",
    "PUBLISHER_CONFIG_HASH_ANNOTATION",
    "PUBLISH_STREAM_ANNOTATION",
    "REFRESH_ANNOTATION",
    "SHORT_NAME",
    "SINGULAR",
    "STREAM_ID_ANNOTATION",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "CredentialsSecretRef",
    "Delivery",
    "DeliveryMode",
    "EffectivePublisher",
    "EffectiveSpec",
    "FileSource",
    "FileVolume",
    "LocalObjectReference",
    "OnRemoteEnd",
    "OvershootStreamSpec",
    "OvershootStreamStatus",
    "Phase",
    "PublisherSpec",
    "Quantity",
    "ResourceRequirements",
    "RtspSource",
    "SecretKeyRef",
    "SecretKeySelector",
    "Source",
    "SpecDefaults",
    "StreamStatus",
    "TestPatternSource",
    "Toleration",
    "UrlSource",
    "Video",
    "effective_spec",
    "get_condition",
    "is_condition_true",
    "parse_quantity",
    "parse_spec",
    "parse_status",
    "parse_stream_id",
    "publish_secret_name",
    "publisher_pod_name",
    "set_condition",
    "to_json",
]

# --- API coordinates --------------------------------------------------------------------

GROUP: Final = "overshoot.ai"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "OvershootStream"
PLURAL: Final = "overshootstreams"
SINGULAR: Final = "overshootstream"
SHORT_NAME: Final = "ovs"
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# --- Annotations and finalizer ----------------------------------------------------------
# kopf keeps its own progress under the same `overshoot.ai/` prefix (settings.annotation_
# prefix), as `overshoot.ai/<handler id>` and `overshoot.ai/last-handled-configuration`:
# no handler id may be `stream-id` or `refresh`.

# The remote stream id, written right after a successful create and before anything else
# (invariant 2). Set by a user on a new resource, it adopts that existing stream instead of
# creating one.
STREAM_ID_ANNOTATION: Final = "overshoot.ai/stream-id"
# Any new value asks for an immediate refresh: re-read the referenced Secrets, GET the remote
# stream, rewrite status (e.g. `kubectl annotate ovs lobby overshoot.ai/refresh="$(date +%s)"
# --overwrite`, or an Argo CD sync that sets it). The value itself means nothing.
REFRESH_ANNOTATION: Final = "overshoot.ai/refresh"
# Set just before POST /streams and removed with the id's record: found set on a resource
# without a recorded id, it means a create may have leaked (invariant 2's Event).
CREATING_ANNOTATION: Final = "overshoot.ai/creating"
# On the publisher Pod: a hash of the rendered PublisherConfig and image, so a spec change
# that needs a new Pod is told apart from one that does not.
PUBLISHER_CONFIG_HASH_ANNOTATION: Final = "overshoot.ai/publisher-config-hash"
# On the publisher Pod: the stream whose room the publish Secret names. Changing it when the
# stream changes is what makes the kubelet sync the Pod now, and with it swap in the new
# Secret, instead of at its next periodic sync (up to a minute or more later).
PUBLISH_STREAM_ANNOTATION: Final = "overshoot.ai/publish-stream"
# Guards deletion of the remote stream (invariant 1).
FINALIZER: Final = "overshoot.ai/delete-stream"

# Longest resource name: `<name>-publisher` must stay a 63-character label value. The CRD
# enforces the same bound with a CEL rule on metadata.name.
MAX_NAME_LENGTH: Final = 53


def publish_secret_name(name: str) -> str:
    """The owned Secret with the publish URL, token and stream id."""
    return f"{name}-publish"


def publisher_pod_name(name: str) -> str:
    """The owned publisher Pod."""
    return f"{name}-publisher"


# Documented: stream ids are UUIDs. Accept any short token of URL-safe characters rather
# than insisting on UUID syntax, but never anything that could change the request path.
_STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def parse_stream_id(value: str | None) -> str | None:
    """A usable stream id from an annotation or status value, or None if absent or unsafe."""
    if value is None:
        return None
    value = value.strip()
    return value if _STREAM_ID.fullmatch(value) else None


# --- Models -----------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class _Frozen(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


_NAME = Annotated[str, Field(min_length=1, max_length=253)]
Quantity = int | str
OnRemoteEnd = Literal["Recreate", "Fail"]
# spec.delivery: who moves the video. A resource asks for one of three; the stream it holds
# is always one of the first two (status.delivery).
DeliveryMode = Literal["Publisher", "ServerPull", "Auto"]
Delivery = Literal["Publisher", "ServerPull"]
# A region name as Overshoot spells them (us-west1, us-central1).
REGION_PATTERN: Final = r"^[a-z][a-z0-9-]{1,62}$"


class SecretKeyRef(_Model):
    """spec.apiKeySecretRef: a Secret in the resource's namespace; `key` defaults later."""

    name: _NAME
    key: _NAME | None = None


class ResourceRequirements(_Model):
    """A subset of core/v1 ResourceRequirements: quantity maps only."""

    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class LocalObjectReference(_Model):
    name: _NAME


class PublisherSpec(_Model):
    """spec.publisher: how the publisher Pod is scheduled and sized."""

    image: str | None = None
    resources: ResourceRequirements | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None
    # core/v1 Affinity, passed through to the Pod unchanged (the CRD preserves its fields).
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    image_pull_secrets: list[LocalObjectReference] | None = None


class OvershootStreamSpec(_Model):
    """spec, as the user wrote it. Constant defaults are filled in here; defaults that come
    from operator settings stay None until `effective_spec()`."""

    source: Source
    # None: not set (Auto delivery reads an explicit video limit as "send it through a
    # publisher"); `effective_spec()` fills in the defaults.
    video: Video | None = None
    delivery: DeliveryMode | None = None
    region: Annotated[str, Field(pattern=REGION_PATTERN)] | None = None
    api_key_secret_ref: SecretKeyRef | None = None
    keepalive_interval_seconds: Annotated[int, Field(ge=30, le=240)] | None = None
    on_remote_end: OnRemoteEnd = "Recreate"
    suspend: bool = False
    publisher: PublisherSpec = Field(default_factory=PublisherSpec)


Phase = Literal[
    "Pending", "Provisioning", "Publishing", "Degraded", "Suspended", "Failed", "Deleting"
]
PHASES: Final[tuple[Phase, ...]] = (
    "Pending",
    "Provisioning",
    "Publishing",
    "Degraded",
    "Suspended",
    "Failed",
    "Deleting",
)
ConditionStatus = Literal["True", "False", "Unknown"]


class ConditionType:
    """The condition types the operator writes (status.conditions[].type)."""

    # The summary: True when the stream is live and frames arrive.
    READY: Final = "Ready"
    # A remote stream exists and its lease is being renewed.
    STREAM_ACTIVE: Final = "StreamActive"
    # Overshoot reports frames arriving recently (invariant 7), not merely a running Pod.
    PUBLISHING: Final = "Publishing"
    # The owned Secret and Pod match the spec.
    SYNCED: Final = "Synced"


class Condition(_Model):
    type: Annotated[str, Field(min_length=1, max_length=316)]
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


class StreamStatus(_Model):
    """status.stream: what Overshoot reports about the media it receives."""

    recent_fps: float | None = None
    last_frame_index: int | None = None
    last_frame_at: datetime | None = None
    first_frame_at: datetime | None = None
    stream_time_ms: int | None = None
    end_reason: str | None = None
    # ServerPull: when Overshoot last pulled a frame from the camera.
    last_pull_at: datetime | None = None


class OvershootStreamStatus(_Model):
    """status, written only by the operator."""

    observed_generation: int | None = None
    phase: Phase | None = None
    stream_id: str | None = None
    # How the held stream gets its video, and the region that serves it.
    delivery: Delivery | None = None
    region: str | None = None
    # What the remote stream was created with (see `EffectiveSpec.stream_revision`).
    stream_revision: str | None = None
    secret_name: str | None = None
    publisher_pod: str | None = None
    expires_at: datetime | None = None
    last_keepalive_time: datetime | None = None
    recreations: int = 0
    stream: StreamStatus | None = None
    conditions: list[Condition] = Field(default_factory=list)


def parse_spec(spec: Mapping[str, Any]) -> OvershootStreamSpec:
    """The typed spec from a kopf `spec` (or any mapping in the wire format)."""
    return OvershootStreamSpec.model_validate(dict(spec))


def parse_status(status: Mapping[str, Any] | None) -> OvershootStreamStatus:
    """The typed status; an absent or empty status is the empty status."""
    return OvershootStreamStatus.model_validate(dict(status or {}))


def to_json(model: BaseModel) -> dict[str, Any]:
    """Wire format of a model for a patch or manifest: camelCase, JSON types, no nulls.

    Nulls are left out rather than sent because a JSON merge patch reads null as "delete";
    to clear a status field, the caller sets it to None in the patch explicitly.
    """
    data: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return data


# --- Conditions -------------------------------------------------------------------------


def get_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_condition_true(conditions: Sequence[Condition], type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return condition is not None and condition.status == "True"


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    now: datetime,
    observed_generation: int | None = None,
) -> list[Condition]:
    """A new conditions list with `type_` set; the input is not changed.

    lastTransitionTime moves only when the status changes (Kubernetes API conventions), so
    a reason or message update does not look like a transition. Order is kept; a new type
    goes last. `now` is truncated to seconds, like Kubernetes' own condition timestamps.
    """
    previous = get_condition(conditions, type_)
    if previous is not None and previous.status == status:
        transition = previous.last_transition_time or now.replace(microsecond=0)
    else:
        transition = now.replace(microsecond=0)
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=observed_generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if c.type == type_ else c for c in conditions]


# --- Defaulting -------------------------------------------------------------------------


class SecretKeySelector(_Frozen):
    """A key in a Secret, with the namespace spelled out (the default API key Secret lives
    in the operator's namespace, a resource's own in the resource's namespace)."""

    namespace: _NAME
    name: _NAME
    key: _NAME


class SpecDefaults(_Frozen):
    """The defaults that come from operator settings; the handler layer builds one from
    `OperatorSettings` at startup."""

    api_key_secret: SecretKeySelector
    keepalive_interval_seconds: Annotated[float, Field(ge=5, le=240)] = 120.0
    delivery: DeliveryMode = "Publisher"
    publisher_image: Annotated[str, Field(min_length=1)]
    publisher_resources: ResourceRequirements = Field(default_factory=ResourceRequirements)


class EffectivePublisher(_Frozen):
    image: str
    resources: ResourceRequirements
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    image_pull_secrets: tuple[LocalObjectReference, ...] = ()


class EffectiveSpec(_Frozen):
    """The spec with every default applied: what decisions and manifest builders use."""

    source: Source
    video: Video
    # Whether spec.video was written (Auto delivery keeps such a resource on a publisher).
    video_set: bool = False
    delivery: DeliveryMode = "Publisher"
    region: str | None = None
    api_key_secret: SecretKeySelector
    keepalive_interval_seconds: float
    on_remote_end: OnRemoteEnd
    suspend: bool
    publisher: EffectivePublisher

    def stream_revision(self, delivery: Delivery, credentials_version: str | None = None) -> str:
        """What a remote stream is bound to once created: its delivery and the region asked
        for, and for a pulled stream the source and the version of its credentials Secret
        (its resourceVersion, never its data). A different revision needs a new stream;
        anything else (the publisher's Pod, keepalive cadence) changes on a live one."""
        material: dict[str, Any] = {"delivery": delivery, "region": self.region}
        if delivery == "ServerPull":
            material["source"] = self.source.model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
            material["credentials"] = credentials_version
        digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
        return digest[:16]


_QUANTITY = re.compile(
    r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?"
)
_SUFFIX = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}


def parse_quantity(value: Quantity) -> Decimal | None:
    """A Kubernetes quantity ("250m", "1Gi", 2) as a number, or None if it is not one."""
    match = _QUANTITY.fullmatch(str(value).strip())
    if match is None:
        return None
    number, suffix = match.group(1), match.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return Decimal(number) * Decimal(10) ** int(suffix[1:])
    return Decimal(number) * _SUFFIX[suffix]


def _fits(request: Quantity, limit: Quantity) -> bool:
    r, lim = parse_quantity(request), parse_quantity(limit)
    return r is not None and lim is not None and r <= lim


def _merge_resources(
    user: ResourceRequirements | None, default: ResourceRequirements
) -> ResourceRequirements:
    """Defaults per resource name, the user's values winning.

    A default never contradicts the user: a default request above the user's limit, or a
    default limit below the user's request, is left out for that resource (Kubernetes then
    uses the limit as the request, or sets no limit); otherwise the Pod would be invalid.
    """
    user_requests = dict(user.requests or {}) if user else {}
    user_limits = dict(user.limits or {}) if user else {}
    requests = {
        k: v
        for k, v in (default.requests or {}).items()
        if k not in user_limits or _fits(v, user_limits[k])
    } | user_requests
    limits = {
        k: v
        for k, v in (default.limits or {}).items()
        if k not in user_requests or _fits(user_requests[k], v)
    } | user_limits
    return ResourceRequirements(requests=requests or None, limits=limits or None)


def effective_spec(
    spec: OvershootStreamSpec, defaults: SpecDefaults, *, namespace: str
) -> EffectiveSpec:
    """`spec` of a resource in `namespace` with every default applied."""
    if spec.api_key_secret_ref is not None:
        api_key = SecretKeySelector(
            namespace=namespace,
            name=spec.api_key_secret_ref.name,
            key=spec.api_key_secret_ref.key or defaults.api_key_secret.key,
        )
    else:
        api_key = defaults.api_key_secret
    publisher = spec.publisher
    return EffectiveSpec(
        source=spec.source,
        video=spec.video or Video(),
        video_set=spec.video is not None,
        delivery=spec.delivery or defaults.delivery,
        region=spec.region,
        api_key_secret=api_key,
        keepalive_interval_seconds=(
            float(spec.keepalive_interval_seconds)
            if spec.keepalive_interval_seconds is not None
            else defaults.keepalive_interval_seconds
        ),
        on_remote_end=spec.on_remote_end,
        suspend=spec.suspend,
        publisher=EffectivePublisher(
            image=publisher.image or defaults.publisher_image,
            resources=_merge_resources(publisher.resources, defaults.publisher_resources),
            node_selector=dict(publisher.node_selector or {}),
            tolerations=tuple(publisher.tolerations or ()),
            affinity=publisher.affinity,
            priority_class_name=publisher.priority_class_name,
            image_pull_secrets=tuple(publisher.image_pull_secrets or ()),
        ),
    )
