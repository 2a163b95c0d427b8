"""Small readers for operator tests: the resource, its children, Events."""

from __future__ import annotations

import base64
from typing import Any

from kubernetes import client

GROUP, VERSION, PLURAL = "overshoot.ai", "v1alpha1", "overshootstreams"


def stream_manifest(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": {"testPattern": {"pattern": "smpte", "width": 640, "height": 360, "fps": 10}},
        "apiKeySecretRef": {"name": "overshoot-api-key", "key": "apiKey"},
    }
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "OvershootStream",
        "metadata": {"name": name},
        "spec": body,
    }


def create_stream(api: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest
    )


def get_stream(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return obj


def patch_stream(api: client.ApiClient, namespace: str, name: str, patch: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, patch
    )


def delete_stream(api: client.ApiClient, namespace: str, name: str) -> None:
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )


def stream_gone(api: client.ApiClient, namespace: str, name: str) -> bool:
    try:
        get_stream(api, namespace, name)
    except client.ApiException as err:
        return err.status == 404
    return False


def status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return get_stream(api, namespace, name).get("status") or {}


def condition(api: client.ApiClient, namespace: str, name: str, type_: str) -> dict[str, Any]:
    for c in status(api, namespace, name).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def publish_secret(api: client.ApiClient, namespace: str, name: str) -> dict[str, str] | None:
    try:
        secret = client.CoreV1Api(api).read_namespaced_secret(f"{name}-publish", namespace)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def publisher_pod(api: client.ApiClient, namespace: str, name: str) -> Any:
    try:
        return client.CoreV1Api(api).read_namespaced_pod(f"{name}-publisher", namespace)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def events(api: client.ApiClient, namespace: str) -> list[Any]:
    return list(client.CoreV1Api(api).list_namespaced_event(namespace).items)
