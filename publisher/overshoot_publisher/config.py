"""The env contract between the operator and the publisher, and the shared source models.

Role: one typed class, `PublisherConfig`, that the operator's Pod builder renders into the
publisher container's environment (`to_env()`) and the publisher parses at startup
(`from_env()`), so the two sides cannot drift. The models of a video source (`Source` and
its four kinds) and of the video limits (`Video`) are defined here, once: the operator's
CRD models (`overshoot_operator.resource`) import them for `spec.source` and `spec.video`.

Boundary: pure pydantic and the standard library. This module must stay importable without
PyAV or LiveKit, because the operator (which installs neither) imports it; and it must never
import `overshoot_operator`, because the publisher image entry point does not need it.

What is NOT here: the publish token and URL. They live only in the operator-owned Secret,
mounted as files under `secret_dir` (invariant 5: tokens never travel through env, command
lines, logs or status). The source credentials are files under `credentials_dir`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

# The one environment variable the publisher reads: JSON of `PublisherConfig`.
ENV_VAR = "OVERSHOOT_PUBLISHER_CONFIG"

# Where the operator mounts the owned Secret `<name>-publish` (a directory volume, not
# subPath, so the kubelet swaps in rotated tokens), and the file names inside it.
PUBLISH_SECRET_DIR = "/var/run/overshoot/publish"  # noqa: S105 - a path, not a secret
PUBLISH_URL_KEY = "url"
PUBLISH_TOKEN_KEY = "token"  # noqa: S105 - a file name, not a secret
PUBLISH_STREAM_ID_KEY = "streamId"

# Where the operator mounts the user's source-credentials Secret, projected onto these two
# file names whatever keys the user's Secret uses (credentialsSecretRef.usernameKey/...).
SOURCE_CREDENTIALS_DIR = "/var/run/overshoot/source-credentials"
CREDENTIALS_USERNAME_FILE = "username"
CREDENTIALS_PASSWORD_FILE = "password"  # noqa: S105 - a file name, not a secret

DEFAULT_HEALTH_PORT = 8080

# Kubernetes object-name limits (DNS-1123 subdomain / label); mirrored in the CRD schema.
_NAME = Annotated[str, Field(min_length=1, max_length=253)]
_KEY = Annotated[str, Field(min_length=1, max_length=253)]
_URL = Annotated[str, Field(min_length=1, max_length=2048)]
_PATH = Annotated[str, Field(min_length=1, max_length=4096)]


class _Model(BaseModel):
    """camelCase on the wire (the CRD and the env JSON), snake_case in Python.

    Unknown fields are ignored on read so an older reader tolerates a newer writer.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
    )


class CredentialsSecretRef(_Model):
    """A Secret in the resource's namespace holding a username and a password."""

    name: _NAME
    username_key: _KEY = "username"
    password_key: _KEY = "password"  # noqa: S105 - a key name, not a secret


class RtspSource(_Model):
    """An RTSP camera or server; credentials come from a Secret, never from the URL."""

    url: _URL
    transport: Literal["TCP", "UDP"] = "TCP"
    credentials_secret_ref: CredentialsSecretRef | None = None


class UrlSource(_Model):
    """An HTTP(S) media URL: HLS playlist, MP4 or MPEG-TS; optional HTTP basic auth."""

    url: _URL
    credentials_secret_ref: CredentialsSecretRef | None = None


class PersistentVolumeClaimVolume(_Model):
    claim_name: _NAME
    read_only: bool = True


class ConfigMapVolume(_Model):
    name: _NAME


class HostPathVolume(_Model):
    path: _PATH


class FileVolume(_Model):
    """The volume that holds a file source: exactly one of the three kinds.

    A deliberately small subset of a Kubernetes VolumeSource; the operator mounts it
    read-only at `FileSource.effective_mount_path`.
    """

    persistent_volume_claim: PersistentVolumeClaimVolume | None = None
    config_map: ConfigMapVolume | None = None
    host_path: HostPathVolume | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> FileVolume:
        count = sum(
            v is not None for v in (self.persistent_volume_claim, self.config_map, self.host_path)
        )
        if count != 1:
            raise ValueError(
                "file.volume must set exactly one of persistentVolumeClaim, configMap, hostPath"
            )
        return self


class FileSource(_Model):
    """A media file, played once or looped.

    `path` is absolute as the publisher sees it. With `volume`, the volume is mounted at
    `mountPath` (default: the directory of `path`); without, the file must be in the image.
    """

    path: _PATH
    loop: bool = False
    volume: FileVolume | None = None
    mount_path: _PATH | None = None

    @property
    def effective_mount_path(self) -> str:
        if self.mount_path is not None:
            return self.mount_path
        parent = self.path.rsplit("/", 1)[0]
        return parent or "/"


TestPatternName = Literal["smpte", "bars", "ball", "gradient", "noise"]


class TestPatternSource(_Model):
    """A synthetic video, generated by the publisher (demos, tests, smoke checks)."""

    # pytest collects classes named Test*; this one is a model, not a test case.
    __test__ = False

    pattern: TestPatternName = "smpte"
    width: Annotated[int, Field(ge=16, le=3840)] = 1280
    height: Annotated[int, Field(ge=16, le=2160)] = 720
    fps: Annotated[int, Field(ge=1, le=60)] = 15


SourceKind = Literal["rtsp", "url", "file", "testPattern"]


class Source(_Model):
    """Where the video comes from: exactly one of `rtsp`, `url`, `file`, `testPattern`."""

    rtsp: RtspSource | None = None
    url: UrlSource | None = None
    file: FileSource | None = None
    test_pattern: TestPatternSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        count = sum(v is not None for v in (self.rtsp, self.url, self.file, self.test_pattern))
        if count != 1:
            raise ValueError("source must set exactly one of rtsp, url, file, testPattern")
        return self

    @property
    def kind(self) -> SourceKind:
        if self.rtsp is not None:
            return "rtsp"
        if self.url is not None:
            return "url"
        if self.file is not None:
            return "file"
        return "testPattern"

    @property
    def credentials_secret_ref(self) -> CredentialsSecretRef | None:
        """The user's Secret with source credentials, if this kind of source has one."""
        if self.rtsp is not None:
            return self.rtsp.credentials_secret_ref
        if self.url is not None:
            return self.url.credentials_secret_ref
        return None


VideoMode = Literal["Auto", "Passthrough", "Transcode"]


class Video(_Model):
    """Limits on what the publisher sends; Overshoot's token cost grows with resolution.

    `Auto` passes the source's encoded video through when it already fits the limits and
    transcodes otherwise; `Passthrough` never transcodes; `Transcode` always does.
    """

    mode: VideoMode = "Auto"
    max_height: Annotated[int, Field(ge=144, le=2160)] = 720
    max_fps: Annotated[int, Field(ge=1, le=60)] = 15


class PublisherConfigError(ValueError):
    """The publisher's environment is missing or malformed; the message says which."""


class PublisherConfig(_Model):
    """Everything the publisher needs except the token, which it reads from `secret_dir`."""

    namespace: _NAME
    # The OvershootStream's name: for logs and the health endpoint, not for lookups.
    name: _NAME
    source: Source
    video: Video = Field(default_factory=Video)
    # Files `url`, `token`, `streamId` of the owned Secret; re-read on change (rotation).
    secret_dir: _PATH = PUBLISH_SECRET_DIR
    # Files `username` and `password`; None when the source has no credentials. The operator
    # sets it to SOURCE_CREDENTIALS_DIR when it mounts the user's Secret.
    credentials_dir: _PATH | None = None
    health_port: Annotated[int, Field(ge=1, le=65535)] = DEFAULT_HEALTH_PORT

    def to_env(self) -> dict[str, str]:
        """The container environment that carries this config (one JSON variable)."""
        return {ENV_VAR: self.model_dump_json(by_alias=True, exclude_none=True)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PublisherConfig:
        """Parse the config from an environment mapping (pass `os.environ`)."""
        raw = environ.get(ENV_VAR)
        if raw is None:
            raise PublisherConfigError(f"{ENV_VAR} is not set; the operator renders it")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PublisherConfigError(f"{ENV_VAR} is not valid JSON: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PublisherConfigError(f"{ENV_VAR} is invalid: {exc}") from exc
