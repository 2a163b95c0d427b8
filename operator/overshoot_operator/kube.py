"""Kubernetes I/O for the operator: the only module that imports the `kubernetes` client.

Boundary: the Kubernetes API (Secrets, Pods, OvershootStream metadata and status). The
client is synchronous, so every call runs in one of this module's worker threads and
nothing blocks the event loop. Results are plain dicts (`_preload_content=False` skips the
generated models, which cost more CPU than the calls themselves).

Errors are translated once into `KubeError` and its subclasses; messages never include a
Secret's data.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import kubernetes
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


class KubeError(Exception):
    """A Kubernetes API call failed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFoundError(KubeError):
    pass


class ConflictError(KubeError):
    pass


class SecretProblem(KubeError):
    """A Secret a resource refers to is missing or lacks a key; a user must fix it."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, status=None)
        self.reason = reason


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
    configuration.connection_pool_maxsize = KUBE_THREADS + URGENT_THREADS
    return kubernetes.client.ApiClient(configuration)


class Kube:
    """Typed async operations on the objects the operator reads and owns."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self._api = api_client
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._threads = ThreadPoolExecutor(KUBE_THREADS, thread_name_prefix="kube")
        self._urgent = ThreadPoolExecutor(URGENT_THREADS, thread_name_prefix="kube-urgent")

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._urgent.shutdown(wait=False, cancel_futures=True)
        self._api.close()  # type: ignore[no-untyped-call]

    async def _call(
        self, what: str, fn: Callable[..., Any], *args: Any, urgent: bool = False, **kw: Any
    ) -> Any:
        def run() -> Any:
            response = fn(*args, _preload_content=False, **kw)
            data = response.data
            return json.loads(data) if data else None

        try:
            threads = self._urgent if urgent else self._threads
            return await asyncio.get_running_loop().run_in_executor(threads, run)
        except ApiException as err:
            message = f"{what} failed: {err.status} {err.reason}"
            message += _status_message(err.body)
            if err.status == 404:
                raise NotFoundError(message, status=404) from None
            if err.status == 409:
                raise ConflictError(message, status=409) from None
            # `from None`: ApiException's text includes response headers and body.
            raise KubeError(message, status=err.status) from None

    # ---- user Secrets (API key, source credentials) ------------------------------------

    async def read_secret_value(
        self, namespace: str, name: str, key: str, *, field: str, owner: str
    ) -> str:
        """One key of a Secret, decoded. `field` and `owner` only shape the error message."""
        try:
            secret = await self._call(
                f"Get Secret {namespace}/{name}", self._core.read_namespaced_secret, name, namespace
            )
        except NotFoundError:
            raise SecretProblem(
                f"{owner}: {field} names Secret {namespace}/{name}, which does not exist; "
                f"create it with key {key!r}",
                reason="SecretNotFound",
            ) from None
        data = (secret or {}).get("data") or {}
        if key not in data:
            present = ", ".join(sorted(data)) or "none"
            raise SecretProblem(
                f"{owner}: {field} Secret {namespace}/{name} has no key {key!r} "
                f"(keys present: {present}); add it or point {field} at the right key",
                reason="SecretKeyMissing",
            )
        try:
            value = base64.b64decode(data[key], validate=True).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            value = ""
        if not value:
            raise SecretProblem(
                f"{owner}: {field} Secret {namespace}/{name} key {key!r} is empty or not text; "
                "put the value in it",
                reason="SecretKeyInvalid",
            )
        return value

    async def check_secret_keys(
        self, namespace: str, name: str, keys: list[str], *, field: str, owner: str
    ) -> None:
        """Raise SecretProblem unless the Secret exists with all `keys` (values unread)."""
        for key in keys:
            await self.read_secret_value(namespace, name, key, field=field, owner=owner)

    # ---- owned Secret ------------------------------------------------------------------

    async def read_publish_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The owned publish Secret's decoded data, or None if it does not exist."""
        try:
            secret = await self._call(
                f"Get Secret {namespace}/{name}", self._core.read_namespaced_secret, name, namespace
            )
        except NotFoundError:
            return None
        out: dict[str, str] = {}
        for key, value in ((secret or {}).get("data") or {}).items():
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
        `urgent` runs it on the threads reserved for token rotations.
        """
        meta = manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]

        async def create() -> None:
            await self._call(
                f"Create Secret {namespace}/{name}",
                self._core.create_namespaced_secret,
                namespace,
                dict(manifest),
                urgent=urgent,
            )

        async def patch() -> None:
            await self._call(
                f"Patch Secret {namespace}/{name}",
                self._core.patch_namespaced_secret,
                name,
                namespace,
                dict(manifest),
                urgent=urgent,
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

    async def create_pod(self, manifest: Mapping[str, Any]) -> None:
        meta = manifest["metadata"]
        await self._call(
            f"Create Pod {meta['namespace']}/{meta['name']}",
            self._core.create_namespaced_pod,
            meta["namespace"],
            dict(manifest),
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
            )

    # ---- Events ------------------------------------------------------------------------

    async def post_event(
        self, obj: Mapping[str, Any], *, type_: str, reason: str, message: str, now: str
    ) -> None:
        """A core/v1 Event about `obj` (apiVersion, kind, metadata name/namespace/uid)."""
        meta = obj["metadata"]
        namespace = meta["namespace"]
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", res.API_VERSION),
                "kind": obj.get("kind", res.KIND),
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            # Kubernetes caps Event messages at 1 KiB.
            "message": message[:1024],
            "source": {"component": "overshoot-operator"},
            "reportingComponent": "overshoot-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._call(
            f"Create Event in {namespace}", self._core.create_namespaced_event, namespace, body
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

    async def patch_stream_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        await self._call(
            f"Patch {res.KIND} {namespace}/{name}",
            self._custom.patch_namespaced_custom_object,
            res.GROUP,
            res.VERSION,
            namespace,
            res.PLURAL,
            name,
            {"metadata": {"annotations": dict(annotations)}},
        )

    async def patch_stream_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """A JSON merge patch of the status subresource (None deletes a field)."""
        await self._call(
            f"Patch {res.KIND} {namespace}/{name} status",
            self._custom.patch_namespaced_custom_object_status,
            res.GROUP,
            res.VERSION,
            namespace,
            res.PLURAL,
            name,
            {"status": dict(status)},
        )


def _status_message(body: Any) -> str:
    """The `message` of a Kubernetes Status body, which never carries Secret data."""
    try:
        parsed = json.loads(body) if isinstance(body, str | bytes) else None
    except ValueError:
        return ""
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return f": {parsed['message'][:300]}"
    return ""
