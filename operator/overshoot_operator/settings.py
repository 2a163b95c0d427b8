"""The operator's settings: one typed object, read from the environment once at startup.

Boundary: environment variables prefixed `OVERSHOOT_` (the Helm chart renders them). Nothing
reads the environment anywhere else; the object is built in `__main__` and passed down.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The remote lease (documented: 300 s). Keepalive intervals are bounded well below it.
LEASE_SECONDS = 300.0


class OperatorSettings(BaseSettings):
    """What an operator process needs; every field has a production-safe default."""

    model_config = SettingsConfigDict(env_prefix="OVERSHOOT_", extra="ignore", frozen=True)

    # Overshoot's base URL including the version prefix. /v1beta is where the docs live
    # now and the only prefix with camera sources (ServerPull) and viewer tokens; /v1
    # serves the same stream shapes for Publisher delivery.
    api_url: str = "https://api.overshoot.ai/v1beta"
    # The Secret (in the operator's namespace) holding the API key of resources that name none.
    default_api_key_secret_namespace: str = "overshoot-system"  # noqa: S105 - a name
    default_api_key_secret_name: str = "overshoot-api-key"  # noqa: S105 - a name
    default_api_key_secret_key: str = "apiKey"  # noqa: S105 - a key name

    # The image of publisher Pods (same image as the operator, other entry point).
    publisher_image: str = "ghcr.io/overshoot-ai/overshoot-operator:0.1.0"
    publisher_image_pull_policy: str = "IfNotPresent"
    publisher_cpu_request: str = "100m"
    publisher_memory_request: str = "128Mi"
    publisher_cpu_limit: str = "1"
    publisher_memory_limit: str = "384Mi"
    # Scratch space: the publisher's /tmp (an emptyDir of 64Mi) and its logs.
    publisher_ephemeral_storage_request: str = "64Mi"
    publisher_ephemeral_storage_limit: str = "256Mi"
    # How long a remote stream is kept while the cluster refuses its publisher Pod (Pod
    # Security, a quota, a LimitRange, a webhook) and no Pod publishes: then it is
    # released, and created again once a dry run shows the Pod would be admitted.
    publisher_rejected_release_seconds: Annotated[float, Field(ge=0, le=3600)] = 120.0
    publisher_health_port: int = 8080
    # A publisher stream that no frame reached within this many seconds of its creation
    # is released (no paid lease for a dead camera). The Pod stays and keeps trying its
    # source (the kubelet restarts it with backoff); a new stream is created once the Pod
    # is Ready, which in that state means its source delivers. 0 never releases.
    first_frame_timeout_seconds: Annotated[float, Field(ge=0, le=86400)] = 180.0

    # spec.delivery of resources that name none. Publisher (a publisher Pod per stream)
    # keeps cameras and their credentials inside the cluster unless a resource opts in;
    # Auto lets Overshoot pull every camera it can reach (no Pod: cheaper at scale).
    default_delivery: Literal["Publisher", "ServerPull", "Auto"] = "Publisher"
    # Networks (CIDRs, comma-separated) besides the public internet that Overshoot can
    # reach, e.g. over a private link: Auto delivery counts cameras there as pullable.
    server_pull_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Auto delivery resolves a camera's host name with this timeout.
    dns_timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 2.0

    # Keepalive cadence when a resource names none: the docs advise about every 2 minutes.
    keepalive_interval_seconds: Annotated[float, Field(ge=5, le=240)] = 120.0
    # Jitter spreads keepalives of many streams created together (fraction of the interval).
    keepalive_jitter: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    # How often GET /streams/{id} refreshes status.stream once frames flow.
    status_poll_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0
    # `Publishing` needs a frame newer than this (invariant 7).
    frames_fresh_seconds: Annotated[float, Field(ge=1, le=600)] = 30.0

    # Process-wide limits on Overshoot calls; keepalives and deletes go first (invariant 4).
    api_max_concurrency: Annotated[int, Field(ge=1, le=1024)] = 32
    # 100/s covers 10,000 streams' keepalives (~83/s at 120 s); creates come next and
    # status polls take what is left (measured at 5,000 streams: one per stream every
    # ~90 s instead of 60; at 10,000, every ~10 min: raise this for fresher status).
    api_max_per_second: Annotated[float, Field(gt=0, le=10000)] = 100.0

    # How long deletion keeps trying DELETE on an unreachable API before it lets go of the
    # finalizer; the lease ends the stream anyway (invariant 1).
    delete_give_up_seconds: Annotated[float, Field(ge=0, le=3600)] = 60.0

    # Kubernetes calls: the read timeout of each (connect is 5 s). A call to an API server
    # that stopped answering fails after this, and is retried on the caller's schedule.
    kube_request_timeout_seconds: Annotated[float, Field(ge=1, le=120)] = 10.0

    # Leader election on a coordination.k8s.io Lease: one replica acts, others stand by
    # (leader.py). On in the Helm chart, also with one replica: a rolling update runs two
    # Pods at once. Off for a single process run by hand.
    leader_election: bool = False
    leader_election_namespace: str = "overshoot-system"
    leader_election_name: str = "overshoot-operator"
    # This replica's name in the Lease; empty means hostname and process id.
    leader_election_identity: str = ""
    # client-go's defaults: a standby takes over at most lease duration plus a retry
    # period after the leader stopped renewing; the leader stops acting after the
    # renew deadline, before anyone can take over.
    leader_lease_duration_seconds: Annotated[float, Field(ge=2, le=600)] = 15.0
    leader_renew_deadline_seconds: Annotated[float, Field(ge=1, le=600)] = 10.0
    leader_retry_period_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0

    # Namespaces to watch; empty means the whole cluster.
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Liveness and metrics endpoints. All interfaces in a Pod (the kubelet probes the Pod
    # IP); 127.0.0.1 for local runs.
    listen_host: str = "0.0.0.0"
    health_port: int = 8081
    metrics_port: int = 9090

    # kopf's own bookkeeping lives in annotations under this prefix, never in spec.
    annotation_prefix: str = "overshoot.ai"

    @field_validator("server_pull_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [cidr.strip() for cidr in value.split(",") if cidr.strip()]
        return value

    @field_validator("server_pull_networks")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as err:
                raise ValueError(f"OVERSHOOT_SERVER_PULL_NETWORKS: {cidr!r} is not a CIDR") from err
        return value

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        # Helm renders a comma-separated string; pydantic-settings would want JSON.
        if isinstance(value, str):
            return [ns.strip() for ns in value.split(",") if ns.strip()]
        return value

    @field_validator("api_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")
