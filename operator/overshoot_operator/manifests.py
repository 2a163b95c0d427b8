"""The Kubernetes manifests of an OvershootStream's children: the publish Secret and the Pod.

Role: the only module that builds manifests. `build_publish_secret()` and
`build_publisher_pod()` return plain dicts in the wire format (camelCase, JSON types) that the
Kubernetes module sends as they are; `pod_config_hash()` and `desired_config_hash()` tell a
spec change that needs a new publisher Pod from one that does not.

Boundary: pure functions, no I/O, no clock, no logging. The publisher's configuration is
rendered through `overshoot_publisher.config.PublisherConfig`, the one env contract the
publisher parses, so the two sides cannot drift.

Invariants kept here (../shared/design.md):
- 5: the publish token is only ever in the Secret's data. The Pod reads it from a mounted
  Secret volume; it is never in the Pod's env, command line or annotations.
- 9: children carry an ownerReference and the small label set of `child_labels()`; the
  resource's own labels are never copied (an Argo CD tracking label on a child makes Argo CD
  prune it as an object that is not in Git).
- 10: the publisher runs non-root with a read-only root filesystem, no privilege
  escalation, all capabilities dropped and the RuntimeDefault seccomp profile (the
  "restricted" Pod Security Standard).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from overshoot_operator.resource import (
    API_VERSION,
    KIND,
    MAX_NAME_LENGTH,
    PUBLISHER_CONFIG_HASH_ANNOTATION,
    EffectiveSpec,
    FileSource,
    ResourceRequirements,
    publish_secret_name,
    publisher_pod_name,
    to_json,
)
from overshoot_operator.settings import OperatorSettings
from overshoot_publisher.config import (
    CREDENTIALS_PASSWORD_FILE,
    CREDENTIALS_USERNAME_FILE,
    PUBLISH_SECRET_DIR,
    PUBLISH_STREAM_ID_KEY,
    PUBLISH_TOKEN_KEY,
    PUBLISH_URL_KEY,
    SOURCE_CREDENTIALS_DIR,
    PublisherConfig,
)

__all__ = [
    "CONTAINER_NAME",
    "HEALTH_PORT_NAME",
    "MANAGED_BY",
    "PUBLISHER_APP",
    "PUBLISHER_COMMAND",
    "PUBLISHER_GID",
    "PUBLISHER_UID",
    "STREAM_LABEL",
    "TMP_DIR",
    "ManifestError",
    "build_publish_secret",
    "build_publisher_pod",
    "child_labels",
    "desired_config_hash",
    "owner_reference",
    "pod_config_hash",
    "publisher_config",
]

# --- Labels -----------------------------------------------------------------------------

# The label the operator's Pod watch selects on; its value is the OvershootStream's name.
STREAM_LABEL: Final = "overshoot.ai/stream"
PUBLISHER_APP: Final = "overshoot-publisher"
MANAGED_BY: Final = "overshoot-operator"

# A label value: at most 63 characters, alphanumeric at both ends, `-_.` inside.
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")

# --- The publisher container ------------------------------------------------------------

CONTAINER_NAME: Final = "publisher"
# The console script of the publisher; the image is the operator's own.
PUBLISHER_COMMAND: Final = ("overshoot-publisher",)
HEALTH_PORT_NAME: Final = "health"
# The conventional "nonroot" uid/gid of distroless images; any non-zero id would do, but a
# fixed one lets fsGroup make the Secret volumes group-readable for it.
PUBLISHER_UID: Final = 65532
PUBLISHER_GID: Final = 65532
# Files owned by root and readable by the group (fsGroup) only: the publisher reads them as
# the group, nobody else on the node's view of the volume can.
_SECRET_FILE_MODE: Final = 0o440
# The root filesystem is read-only; libraries that want scratch space get a small emptyDir.
TMP_DIR: Final = "/tmp"  # noqa: S108 - the container's own /tmp, an emptyDir
_TMP_SIZE_LIMIT: Final = "64Mi"
# Long enough for the publisher to unpublish its track and leave the room cleanly.
_TERMINATION_GRACE_SECONDS: Final = 15

_PUBLISH_VOLUME: Final = "publish"
_CREDENTIALS_VOLUME: Final = "source-credentials"
_MEDIA_VOLUME: Final = "media"
_TMP_VOLUME: Final = "tmp"

_HASH_LENGTH: Final = 16

_RESERVED_PATHS: Final = (
    TMP_DIR,
    PUBLISH_SECRET_DIR,
    SOURCE_CREDENTIALS_DIR,
    "/dev",
    "/proc",
    "/sys",
)


class ManifestError(ValueError):
    """A resource cannot be rendered into valid manifests; the message names the field."""


# --- Ownership and labels ---------------------------------------------------------------


def _metadata(resource: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an OvershootStream object."""
    meta: Mapping[str, Any] = resource.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not name or not isinstance(namespace, str) or not namespace:
        raise ManifestError(f"{KIND} has no metadata.name or metadata.namespace")
    return namespace, name


def owner_reference(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The ownerReference that makes a child garbage-collected with its OvershootStream.

    `blockOwnerDeletion` keeps the owner around (foreground deletion) until the child is
    gone, so a publisher never outlives the resource that pays for its stream.
    """
    namespace, name = _metadata(resource)
    uid = (resource.get("metadata") or {}).get("uid")
    if not isinstance(uid, str) or not uid:
        raise ManifestError(f"{KIND} {namespace}/{name} has no metadata.uid")
    return {
        # Any served version is a valid owner version; the object's own is the natural one.
        "apiVersion": resource.get("apiVersion") or API_VERSION,
        "kind": resource.get("kind") or KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_labels(name: str) -> dict[str, str]:
    """The labels of every child of the OvershootStream `name`: an allow-list, nothing copied.

    Raises ManifestError if `name` is not a valid label value (the CRD caps names at 53
    characters, so this only trips on a resource that bypassed admission).
    """
    if len(name) > MAX_NAME_LENGTH or not _LABEL_VALUE.fullmatch(name):
        raise ManifestError(
            f"{KIND} name {name!r} must be a label value of at most {MAX_NAME_LENGTH} characters"
        )
    return {
        "app.kubernetes.io/name": PUBLISHER_APP,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        STREAM_LABEL: name,
    }


def _child_metadata(resource: Mapping[str, Any], child_name: str) -> dict[str, Any]:
    namespace, name = _metadata(resource)
    return {
        "name": child_name,
        "namespace": namespace,
        "labels": child_labels(name),
        "ownerReferences": [owner_reference(resource)],
    }


# --- The publish Secret -----------------------------------------------------------------


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode("ascii")


def build_publish_secret(
    resource: Mapping[str, Any], *, url: str, token: str, stream_id: str
) -> dict[str, Any]:
    """The owned Secret `<name>-publish`: LiveKit URL, room token and stream id.

    The returned dict CONTAINS THE TOKEN (base64 is not encryption): send it to the API
    server and nowhere else; never log it, put it in an Event or an exception message
    (invariant 5).

    `data` (base64) rather than `stringData`: the API server only ever returns `data`, so
    what is built here compares directly with what is read back.
    """
    _, name = _metadata(resource)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _child_metadata(resource, publish_secret_name(name)),
        "type": "Opaque",
        "data": {
            PUBLISH_URL_KEY: _b64(url),
            PUBLISH_TOKEN_KEY: _b64(token),
            PUBLISH_STREAM_ID_KEY: _b64(stream_id),
        },
    }


# --- The publisher Pod ------------------------------------------------------------------


def publisher_config(
    resource_meta: Mapping[str, Any], spec: EffectiveSpec, settings: OperatorSettings
) -> PublisherConfig:
    """The publisher's configuration for a resource with metadata `resource_meta`.

    Never the token: the publisher reads it from the Secret mounted at `secret_dir`.
    """
    namespace, name = _metadata({"metadata": resource_meta})
    has_credentials = spec.source.credentials_secret_ref is not None
    return PublisherConfig(
        namespace=namespace,
        name=name,
        source=spec.source,
        video=spec.video,
        secret_dir=PUBLISH_SECRET_DIR,
        credentials_dir=SOURCE_CREDENTIALS_DIR if has_credentials else None,
        health_port=settings.publisher_health_port,
    )


def _resources(resources: ResourceRequirements) -> dict[str, Any]:
    # Quantities as strings: the canonical wire form, so `1` and "1" hash alike.
    out: dict[str, Any] = {}
    if resources.requests:
        out["requests"] = {k: str(v) for k, v in sorted(resources.requests.items())}
    if resources.limits:
        out["limits"] = {k: str(v) for k, v in sorted(resources.limits.items())}
    return out


def _is_within(path: str, directory: str) -> bool:
    path, directory = path.rstrip("/") or "/", directory.rstrip("/") or "/"
    return path == directory or path.startswith(directory + "/")


def _file_volume(
    namespace: str, name: str, file: FileSource
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(volume, volumeMount) for a file source's volume, or None if the file is in the image."""
    if file.volume is None:
        return None
    mount_path = file.effective_mount_path
    # Kubernetes refuses duplicate mount paths, and a mount inside a Secret volume cannot
    # be created; the CRD does not know the operator's own mount points, so check here.
    # The runtime's own filesystems are refused too: a volume over /dev or /proc breaks
    # the container before the publisher starts, with a far less helpful message.
    for reserved in _RESERVED_PATHS:
        if _is_within(mount_path, reserved) or _is_within(reserved, mount_path):
            raise ManifestError(
                f"{KIND} {namespace}/{name}: spec.source.file mount path {mount_path!r} "
                f"overlaps {reserved!r}, which the publisher container needs; put the file "
                f"in another directory or set spec.source.file.mountPath"
            )
    source = file.volume
    volume: dict[str, Any] = {"name": _MEDIA_VOLUME}
    if source.persistent_volume_claim is not None:
        volume["persistentVolumeClaim"] = {
            "claimName": source.persistent_volume_claim.claim_name,
            "readOnly": source.persistent_volume_claim.read_only,
        }
    elif source.config_map is not None:
        volume["configMap"] = {"name": source.config_map.name}
    elif source.host_path is not None:
        volume["hostPath"] = {"path": source.host_path.path}
    # The publisher only ever reads media: read-only whatever the volume allows.
    mount = {"name": _MEDIA_VOLUME, "mountPath": mount_path, "readOnly": True}
    return volume, mount


def _scheduling(spec: EffectiveSpec) -> dict[str, Any]:
    publisher = spec.publisher
    out: dict[str, Any] = {}
    if publisher.node_selector:
        out["nodeSelector"] = dict(sorted(publisher.node_selector.items()))
    if publisher.tolerations:
        out["tolerations"] = [to_json(t) for t in publisher.tolerations]
    if publisher.affinity:
        # A copy: the caller may change the manifest, the spec model must not change with it.
        out["affinity"] = copy.deepcopy(publisher.affinity)
    if publisher.priority_class_name:
        out["priorityClassName"] = publisher.priority_class_name
    if publisher.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": s.name} for s in publisher.image_pull_secrets]
    return out


def build_publisher_pod(
    resource: Mapping[str, Any], spec: EffectiveSpec, settings: OperatorSettings
) -> dict[str, Any]:
    """The owned publisher Pod `<name>-publisher`, with its config hash annotation.

    A bare Pod, not a Deployment: exactly one publisher per stream, and the operator, which
    watches it by `STREAM_LABEL`, recreates it when it is deleted or its node is gone. The
    kubelet restarts a crashing publisher in place (`restartPolicy: Always`).
    """
    namespace, name = _metadata(resource)
    config = publisher_config(resource["metadata"], spec, settings)

    volumes: list[dict[str, Any]] = [
        {
            "name": _PUBLISH_VOLUME,
            # A whole-directory Secret volume, never subPath: only then does the kubelet swap
            # in a rotated token or a new stream's room (mounted.py re-reads the files).
            "secret": {
                "secretName": publish_secret_name(name),
                "defaultMode": _SECRET_FILE_MODE,
            },
        }
    ]
    mounts: list[dict[str, Any]] = [
        {"name": _PUBLISH_VOLUME, "mountPath": PUBLISH_SECRET_DIR, "readOnly": True}
    ]

    credentials = spec.source.credentials_secret_ref
    if credentials is not None:
        volumes.append(
            {
                "name": _CREDENTIALS_VOLUME,
                "secret": {
                    "secretName": credentials.name,
                    # Whatever the user's keys are called, the publisher sees two fixed files.
                    "items": [
                        {"key": credentials.username_key, "path": CREDENTIALS_USERNAME_FILE},
                        {"key": credentials.password_key, "path": CREDENTIALS_PASSWORD_FILE},
                    ],
                    "defaultMode": _SECRET_FILE_MODE,
                },
            }
        )
        mounts.append(
            {"name": _CREDENTIALS_VOLUME, "mountPath": SOURCE_CREDENTIALS_DIR, "readOnly": True}
        )

    if spec.source.file is not None:
        media = _file_volume(namespace, name, spec.source.file)
        if media is not None:
            volumes.append(media[0])
            mounts.append(media[1])

    volumes.append({"name": _TMP_VOLUME, "emptyDir": {"sizeLimit": _TMP_SIZE_LIMIT}})
    mounts.append({"name": _TMP_VOLUME, "mountPath": TMP_DIR})

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.publisher.image,
        "imagePullPolicy": settings.publisher_image_pull_policy,
        "command": list(PUBLISHER_COMMAND),
        # The config only: no token (invariant 5); PublisherConfig has no field for one.
        "env": [{"name": k, "value": v} for k, v in sorted(config.to_env().items())],
        "ports": [
            {"name": HEALTH_PORT_NAME, "containerPort": config.health_port, "protocol": "TCP"}
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": HEALTH_PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        # Generous: a source that reconnects is unready, not dead; only a wedged process
        # (no answer for a minute) is restarted.
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": HEALTH_PORT_NAME},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 6,
        },
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        # The last log lines become the termination message when the publisher dies
        # without writing one, so `kubectl describe` shows why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "terminationMessagePath": "/dev/termination-log",
    }
    resources = _resources(spec.publisher.resources)
    if resources:
        container["resources"] = resources

    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "restartPolicy": "Always",
        # The publisher never talks to the Kubernetes API.
        "automountServiceAccountToken": False,
        # No *_SERVICE_HOST variables from every Service in the namespace.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": _TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": PUBLISHER_UID,
            "runAsGroup": PUBLISHER_GID,
            "fsGroup": PUBLISHER_GID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **_scheduling(spec),
    }

    metadata = _child_metadata(resource, publisher_pod_name(name))
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": pod_spec,
    }
    metadata["annotations"] = {PUBLISHER_CONFIG_HASH_ANNOTATION: pod_config_hash(pod)}
    return pod


# --- Replacement ------------------------------------------------------------------------


def pod_config_hash(pod: Mapping[str, Any]) -> str:
    """A stable hash of a rendered Pod's spec: sha256 of canonical JSON, first 16 hex digits.

    The whole spec is hashed, because a Pod's spec is (almost all) immutable: any change to
    it needs a new Pod. Metadata is not, so the hash never moves with labels or annotations
    (nor with the hash annotation itself). Computed on the operator's rendering, never on a
    Pod read back from the API server, whose spec has defaults filled in.
    """
    canonical = json.dumps(
        pod.get("spec") or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:_HASH_LENGTH]


def _annotation(pod: Mapping[str, Any]) -> str | None:
    annotations: Mapping[str, Any] = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(PUBLISHER_CONFIG_HASH_ANNOTATION)
    return value if isinstance(value, str) else None


def desired_config_hash(desired_pod: Mapping[str, Any]) -> str:
    """The config hash a Pod built here carries (what a running Pod is compared with)."""
    return _annotation(desired_pod) or pod_config_hash(desired_pod)
