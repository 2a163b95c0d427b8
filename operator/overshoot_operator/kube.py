"""Kubernetes I/O for the operator: the only module that imports the `kubernetes` client.

Boundary: the Kubernetes API (Secrets, Pods, Events, Leases, OvershootStream metadata and
status). The client is synchronous, so every call runs in one of this module's worker
threads and nothing blocks the event loop. Results are plain dicts (`_preload_content=False`
skips the generated models, which cost more CPU than the calls themselves).

Every call has a timeout (connect and read), and every way a call can fail, an HTTP error
or a connection reset, refused or timed out in urllib3, becomes a `KubeError` (translated
here, once). Messages never include a Secret's data.

Writes that act on the resource or its children pass `write_gate` first: a replica that no
longer holds the leader Lease raises there instead of writing (leader.py).

Writes to the resource carry its uid, so a write meant for one incarnation of a name never
lands on a successor created under the same name.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from overshoot_operator import resource as res

T = TypeVar("T")

# Threads for the synchronous client. Not asyncio's default executor: that has
# min(32, CPUs + 4) threads, 6 on a 2-core node, which capped every Kubernetes call of
# the process (keepalive Secret and status writes of thousands of streams) at 6 in flight.
KUBE_THREADS = 32
# Threads of their own for token rotations: a burst of creates queues hundreds of calls on
# the pool above, and a publisher that reconnects needs the newest token.
URGENT_THREADS = 4
# The leader Lease is renewed on a thread nobody else uses: a renewal stuck behind a
# thousand status writes would cost the leadership (and stop every keepalive).
LEADER_THREADS = 1
CONNECT_TIMEOUT_SECONDS = 5.0

WriteGate = Callable[[], None]


class KubeError(Exception):
    """A Kubernetes API call failed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def namespace_terminating(self) -> bool:
        """Refused because the namespace is being deleted (NamespaceLifecycle admission):
        nothing to fix, the resource itself is about to be deleted too."""
        return self.status == 403 and "because it is being terminated" in str(self)

    @property
    def refused(self) -> bool:
        """The API server (or an admission plugin) refused the object: 403 or 422. Trying
        the same request again will not help until someone changes something."""
        return self.status in (403, 422) and not self.namespace_terminating


class KubeUnavailable(KubeError):
    """No answer: connection refused or reset, a timeout, a 5xx, or a 429."""


class NotFoundError(KubeError):
    pass


class ConflictError(KubeError):
    """409: the object changed since it was read (resourceVersion) or already exists."""


class SecretProblem(KubeError):
    """A Secret a resource refers to is missing or lacks a key; a user must fix it."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, status=None)
        self.reason = reason


@dataclass(frozen=True)
class SecretData:
    """A Secret as read: its data (base64 still encoded; never logged) and the
    resourceVersion that changes with every write to it."""

    data: dict[str, str] = field(repr=False)
    resource_version: str


def load_api_client(kubeconfig: str | None = None) -> kubernetes.client.ApiClient:
    """An ApiClient from in-cluster config, or the kubeconfig (explicit path or default)."""
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig:
            raise kubernetes.config.ConfigException("explicit kubeconfig")
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    # One pooled connection per worker thread that carries our calls.
    configuration.connection_pool_maxsize = KUBE_THREADS + URGENT_THREADS + LEADER_THREADS
    # No hidden retries inside urllib3: each one would multiply a call's timeout, and the
    # callers retry on their own schedule (with backoff, knowing what the call was).
    configuration.retries = False
    return kubernetes.client.ApiClient(configuration)


class Kube:
    """Typed async operations on the objects the operator reads and owns."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        *,
        request_timeout: float = 10.0,
        write_gate: WriteGate | None = None,
    ) -> None:
        self._api = api_client
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._coordination = kubernetes.client.CoordinationV1Api(api_client)
        self._timeout = (CONNECT_TIMEOUT_SECONDS, request_timeout)
        self._write_gate = write_gate
        self._threads = ThreadPoolExecutor(KUBE_THREADS, thread_name_prefix="kube")
        self._urgent = ThreadPoolExecutor(URGENT_THREADS, thread_name_prefix="kube-urgent")
        self._leader = ThreadPoolExecutor(LEADER_THREADS, thread_name_prefix="kube-leader")

    def set_write_gate(self, gate: WriteGate | None) -> None:
        self._write_gate = gate

    def close(self) -> None:
        for pool in (self._threads, self._urgent, self._leader):
            pool.shutdown(wait=False, cancel_futures=True)
        self._api.close()  # type: ignore[no-untyped-call]

    async def _call(
        self,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        write: bool = False,
        pool: ThreadPoolExecutor | None = None,
        limit: tuple[float, float] | None = None,
        **kw: Any,
    ) -> Any:
        if write and self._write_gate is not None:
            self._write_gate()
        request_timeout = limit or self._timeout

        def run() -> Any:
            response = fn(*args, _preload_content=False, _request_timeout=request_timeout, **kw)
            data = response.data
            return json.loads(data) if data else None

        try:
            return await asyncio.get_running_loop().run_in_executor(pool or self._threads, run)
        except ApiException as err:
            message = f"{what} failed: {err.status} {err.reason}"
            message += _status_message(err.body)
            # `from None`: ApiException's text includes response headers and body.
            if err.status == 404:
                raise NotFoundError(message, status=404) from None
            if err.status == 409:
                raise ConflictError(message, status=409) from None
            if err.status is not None and (err.status >= 500 or err.status == 429):
                raise KubeUnavailable(message, status=err.status) from None
            raise KubeError(message, status=err.status) from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as err:
            # Connection refused or reset, read timeouts, TLS failures, a truncated body:
            # the API server did not answer this call (urllib3 raises these raw).
            raise KubeUnavailable(f"{what} failed: {_transport_reason(err)}") from None

    # ---- user Secrets (API key, source credentials) ------------------------------------

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        """A Secret's data (base64 still encoded) and version, or None if it does not exist."""
        try:
            secret = await self._call(
                f"Get Secret {namespace}/{name}", self._core.read_namespaced_secret, name, namespace
            )
        except NotFoundError:
            return None
        body = secret or {}
        return SecretData(
            data=body.get("data") or {},
            resource_version=str((body.get("metadata") or {}).get("resourceVersion") or ""),
        )

    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data, base64 still encoded, or None if it does not exist."""
        secret = await self.read_secret(namespace, name)
        return secret.data if secret is not None else None

    # ---- owned Secret ------------------------------------------------------------------

    async def read_publish_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The owned publish Secret's decoded data, or None if it does not exist."""
        data = await self.read_secret_data(namespace, name)
        if data is None:
            return None
        out: dict[str, str] = {}
        for key, value in data.items():
            try:
                out[key] = base64.b64decode(value).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                continue
        return out

    async def apply_secret(
        self, manifest: Mapping[str, Any], *, exists: bool = False, urgent: bool = False
    ) -> None:
        """Create the Secret, or replace its data if it exists (we own it).

        `exists` says which to try first: a keepalive's token rotation patches a Secret
        that is almost always there, and a refused create is one more write request.
        `urgent` runs it on the threads reserved for token rotations. Callers only apply
        a Secret right after reading that its owner exists; the ownerReference makes the
        garbage collector remove it if the owner went away in between.
        """
        meta = manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        pool = self._urgent if urgent else None

        async def create() -> None:
            await self._call(
                f"Create Secret {namespace}/{name}",
                self._core.create_namespaced_secret,
                namespace,
                dict(manifest),
                write=True,
                pool=pool,
            )

        async def patch() -> None:
            await self._call(
                f"Patch Secret {namespace}/{name}",
                self._core.patch_namespaced_secret,
                name,
                namespace,
                dict(manifest),
                write=True,
                pool=pool,
            )

        if exists:
            try:
                await patch()
            except NotFoundError:
                await create()
            return
        try:
            await create()
        except ConflictError:
            await patch()

    async def delete_secret(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFoundError):
            await self._call(
                f"Delete Secret {namespace}/{name}",
                self._core.delete_namespaced_secret,
                name,
                namespace,
                write=True,
            )

    # ---- owned Pod ---------------------------------------------------------------------

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            pod: dict[str, Any] = await self._call(
                f"Get Pod {namespace}/{name}", self._core.read_namespaced_pod, name, namespace
            )
        except NotFoundError:
            return None
        return pod

    async def create_pod(
        self, manifest: Mapping[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Create the Pod; `dry_run` asks admission (Pod Security, quotas, LimitRanges,
        webhooks) without creating anything."""
        meta = manifest["metadata"]
        extra: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        pod: dict[str, Any] = await self._call(
            f"Create Pod {meta['namespace']}/{meta['name']}" + (" (dry run)" if dry_run else ""),
            self._core.create_namespaced_pod,
            meta["namespace"],
            dict(manifest),
            write=True,
            **extra,
        )
        return pod

    async def annotate_pod(
        self, namespace: str, name: str, *, uid: str, annotations: Mapping[str, str]
    ) -> None:
        """Merge `annotations` into that incarnation of the Pod (`uid` is a precondition)."""
        await self._call(
            f"Patch Pod {namespace}/{name}",
            self._core.patch_namespaced_pod,
            name,
            namespace,
            {"metadata": {"uid": uid, "annotations": dict(annotations)}},
            write=True,
        )

    async def delete_pod(self, namespace: str, name: str, *, uid: str | None = None) -> None:
        """Delete the Pod; with `uid`, only that incarnation (never a successor)."""
        body: dict[str, Any] = {"preconditions": {"uid": uid}} if uid else {}
        with contextlib.suppress(NotFoundError, ConflictError):
            await self._call(
                f"Delete Pod {namespace}/{name}",
                self._core.delete_namespaced_pod,
                name,
                namespace,
                body=body,
                write=True,
            )

    # ---- Events ------------------------------------------------------------------------

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> str:
        """Create a core/v1 Event; returns its generated name."""
        created = await self._call(
            f"Create Event in {namespace}",
            self._core.create_namespaced_event,
            namespace,
            dict(body),
            write=True,
        )
        name: str = (created or {}).get("metadata", {}).get("name", "")
        return name

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """Bump a repeated Event's count and lastTimestamp (client-go's aggregation)."""
        await self._call(
            f"Patch Event {namespace}/{name}",
            self._core.patch_namespaced_event,
            name,
            namespace,
            dict(patch),
            write=True,
        )

    # ---- the OvershootStream itself ----------------------------------------------------

    async def get_stream_resource(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self._call(
                f"Get {res.KIND} {namespace}/{name}",
                self._custom.get_namespaced_custom_object,
                res.GROUP,
                res.VERSION,
                namespace,
                res.PLURAL,
                name,
            )
        except NotFoundError:
            return None
        return obj

    async def patch_stream_metadata(
        self,
        namespace: str,
        name: str,
        *,
        uid: str,
        resource_version: str | None = None,
        annotations: Mapping[str, str | None] | None = None,
        finalizers: list[str] | None = None,
    ) -> dict[str, Any]:
        """A JSON merge patch of the resource's metadata; returns the object as stored.

        `uid` is a precondition (the API server refuses a patch that would change it), so
        the write never lands on a successor with the same name. `resource_version`, when
        given, makes it an optimistic update (409 if the object changed since): required
        with `finalizers`, because a merge patch replaces the whole list.
        """
        meta: dict[str, Any] = {"uid": uid}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        if annotations is not None:
            meta["annotations"] = dict(annotations)
        if finalizers is not None:
            meta["finalizers"] = finalizers
        obj: dict[str, Any] = await self._call(
            f"Patch {res.KIND} {namespace}/{name}",
            self._custom.patch_namespaced_custom_object,
            res.GROUP,
            res.VERSION,
            namespace,
            res.PLURAL,
            name,
            {"metadata": meta},
            write=True,
        )
        return obj

    async def replace_stream_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, uid: str
    ) -> dict[str, Any]:
        """Set the whole status of the incarnation `uid` (the operator is its only writer).

        A JSON patch that first tests the uid: the status subresource ignores metadata in
        a merge patch, so this is the one way to make the write refuse a successor created
        under the same name (422, the test failed) instead of landing on it.
        """
        obj: dict[str, Any] = await self._call(
            f"Patch {res.KIND} {namespace}/{name} status",
            self._custom.patch_namespaced_custom_object_status,
            res.GROUP,
            res.VERSION,
            namespace,
            res.PLURAL,
            name,
            [
                {"op": "test", "path": "/metadata/uid", "value": uid},
                {"op": "add", "path": "/status", "value": dict(status)},
            ],
            write=True,
            _content_type="application/json-patch+json",
        )
        return obj

    async def api_group_served(self, group: str, version: str, plural: str) -> bool:
        """Whether discovery lists `plural` in group/version (a CRD installed and served)."""
        try:
            found = await self._call(
                f"Get discovery of {group}/{version}",
                self._custom.get_api_resources,
                group,
                version,
            )
        except NotFoundError:
            return False
        return any(r.get("name") == plural for r in (found or {}).get("resources") or [])

    # ---- the leader Lease (coordination.k8s.io) ----------------------------------------

    async def get_lease(
        self, namespace: str, name: str, *, read_timeout: float
    ) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = await self._call(
                f"Get Lease {namespace}/{name}",
                self._coordination.read_namespaced_lease,
                name,
                namespace,
                pool=self._leader,
                limit=(min(CONNECT_TIMEOUT_SECONDS, read_timeout), read_timeout),
            )
        except NotFoundError:
            return None
        return lease

    async def create_lease(
        self, namespace: str, body: Mapping[str, Any], *, read_timeout: float
    ) -> dict[str, Any]:
        lease: dict[str, Any] = await self._call(
            f"Create Lease {namespace}/{body['metadata']['name']}",
            self._coordination.create_namespaced_lease,
            namespace,
            dict(body),
            pool=self._leader,
            limit=(min(CONNECT_TIMEOUT_SECONDS, read_timeout), read_timeout),
        )
        return lease

    async def replace_lease(
        self, namespace: str, name: str, body: Mapping[str, Any], *, read_timeout: float
    ) -> dict[str, Any]:
        """PUT with the body's resourceVersion: 409 if someone else wrote it since."""
        lease: dict[str, Any] = await self._call(
            f"Update Lease {namespace}/{name}",
            self._coordination.replace_namespaced_lease,
            name,
            namespace,
            dict(body),
            pool=self._leader,
            limit=(min(CONNECT_TIMEOUT_SECONDS, read_timeout), read_timeout),
        )
        return lease


def _status_message(body: Any) -> str:
    """The `message` of a Kubernetes Status body, which never carries Secret data."""
    try:
        parsed = json.loads(body) if isinstance(body, str | bytes) else None
    except ValueError:
        return ""
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return f": {parsed['message'][:300]}"
    return ""


def _transport_reason(err: BaseException) -> str:
    """A short cause for a transport failure: urllib3 wraps the interesting one."""
    cause: BaseException = err
    reason = getattr(err, "reason", None)
    if isinstance(reason, BaseException):
        cause = reason
    text = str(cause).split(": ", 1)[-1] if str(cause) else ""
    name = type(cause).__name__
    return f"{name}: {text[:200]}" if text else name
