"""The OvershootStream CRD against a real kube-apiserver: it installs, becomes Established,
accepts valid resources and the status the operator writes, and refuses invalid resources at
create with a message that names the field (the CEL rules and schema bounds at admission).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fixtures.cluster import ApplyYaml, apply_manifests, wait_for
from overshoot_operator import resource

pytestmark = pytest.mark.integration

CRD_PATH = Path(__file__).parents[2] / "deploy" / "crds" / "overshoot.ai_overshootstreams.yaml"


@pytest.fixture(scope="module")
def crd_installed(kube_api: client.ApiClient) -> None:
    """Install the CRD once for this module and wait until it is Established.

    It stays installed: other modules in the session apply the same file (idempotent).
    """
    apply_manifests(kube_api, CRD_PATH)
    ext = client.ApiextensionsV1Api(kube_api)

    def established() -> bool:
        crd: Any = ext.read_custom_resource_definition(resource.CRD_NAME)
        conditions = {c.type: c.status for c in (crd.status.conditions or [])}
        return conditions.get("Established") == "True"

    wait_for(established, 60, what=f"CRD {resource.CRD_NAME} to be Established")


@pytest.fixture
def objects(kube_api: client.ApiClient, crd_installed: None) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def _body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": resource.API_VERSION,
        "kind": resource.KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def _create(
    objects: client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    created: Any = objects.create_namespaced_custom_object(
        resource.GROUP, resource.VERSION, namespace, resource.PLURAL, _body(name, spec)
    )
    return dict(created)


def _refusal(
    objects: client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any]
) -> str:
    with pytest.raises(ApiException) as caught:
        _create(objects, namespace, name, spec)
    assert caught.value.status == 422, caught.value.body
    message: str = json.loads(caught.value.body or "{}")["message"]
    return message


def test_crd_is_established_and_served(kube_api: client.ApiClient, crd_installed: None) -> None:
    crd: Any = client.ApiextensionsV1Api(kube_api).read_custom_resource_definition(
        resource.CRD_NAME
    )
    assert crd.spec.names.short_names == ["ovs"]
    assert crd.spec.names.categories == ["overshoot"]
    conditions = {c.type: c for c in crd.status.conditions}
    # NonStructuralSchema would be set if the schema were not structural.
    assert "NonStructuralSchema" not in conditions
    assert conditions["NamesAccepted"].status == "True"


VALID_SPECS: dict[str, dict[str, Any]] = {
    "rtsp": {
        "source": {
            "rtsp": {
                "url": "rtsp://10.0.0.12:554/stream1",
                "transport": "TCP",
                "credentialsSecretRef": {"name": "lobby-cam"},
            }
        },
        "video": {"mode": "Auto", "maxHeight": 720, "maxFps": 15},
        "apiKeySecretRef": {"name": "overshoot", "key": "apiKey"},
        "keepaliveIntervalSeconds": 120,
        "onRemoteEnd": "Recreate",
        "suspend": False,
    },
    "hls": {
        "source": {
            "url": {
                "url": "https://cdn.example.com/live/@channel/index.m3u8?sig=a@b",
                "credentialsSecretRef": {
                    "name": "cdn",
                    "usernameKey": "user",
                    "passwordKey": "pass",
                },
            }
        }
    },
    "clip": {
        "source": {
            "file": {
                "path": "/media/clips/lobby.mp4",
                "loop": True,
                "mountPath": "/media",
                "volume": {"persistentVolumeClaim": {"claimName": "media", "readOnly": True}},
            }
        },
        "onRemoteEnd": "Fail",
    },
    "in-image": {"source": {"file": {"path": "/opt/clips/sample.mp4"}}},
    "pattern": {"source": {"testPattern": {}}},
    "pattern-full": {
        "source": {"testPattern": {"pattern": "ball", "width": 640, "height": 360, "fps": 30}},
        "keepaliveIntervalSeconds": 240,
        "publisher": {
            "image": "example.com/overshoot:dev",
            "resources": {
                "requests": {"cpu": "250m", "memory": "256Mi"},
                "limits": {"cpu": 1, "memory": "1Gi"},
            },
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [
                {"key": "camera", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "x", "operator": "Equal", "value": "y", "tolerationSeconds": 30},
            ],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}
                        ]
                    }
                }
            },
            "priorityClassName": "video",
            "imagePullSecrets": [{"name": "registry"}],
        },
    },
}


@pytest.mark.parametrize("example", sorted(VALID_SPECS))
def test_valid_resources_are_accepted_unchanged(
    objects: client.CustomObjectsApi, namespace: str, example: str
) -> None:
    spec = VALID_SPECS[example]
    created = _create(objects, namespace, example, spec)
    # Nothing pruned, nothing defaulted: what is in Git is what is stored (no drift).
    assert created["spec"] == spec
    # And the operator's models read it.
    assert resource.parse_spec(created["spec"]).source.kind in {
        "rtsp",
        "url",
        "file",
        "testPattern",
    }


def test_the_models_dump_is_accepted(objects: client.CustomObjectsApi, namespace: str) -> None:
    """What the operator's models serialise (e.g. in examples or tests) is a valid spec."""
    spec = resource.parse_spec(VALID_SPECS["pattern-full"])
    created = _create(objects, namespace, "dumped", resource.to_json(spec))
    assert resource.parse_spec(created["spec"]) == spec


def test_status_written_by_the_operator_is_accepted(
    objects: client.CustomObjectsApi, namespace: str
) -> None:
    _create(objects, namespace, "lobby", VALID_SPECS["pattern"])
    now = datetime(2026, 11, 28, 10, 0, 0, 500000, tzinfo=UTC)
    conditions = resource.set_condition(
        [], resource.ConditionType.READY, "True", "Publishing", "Frames arriving", now=now
    )
    status = resource.OvershootStreamStatus(
        observed_generation=1,
        phase="Publishing",
        stream_id="2ea5a604-d225-4cd2-82ac-b907cb0b4f63",
        secret_name=resource.publish_secret_name("lobby"),
        publisher_pod=resource.publisher_pod_name("lobby"),
        expires_at=now,
        last_keepalive_time=now,
        recreations=2,
        stream=resource.StreamStatus(
            recent_fps=14.8,
            last_frame_index=4521,
            last_frame_at=now,
            first_frame_at=now,
            stream_time_ms=12480,
            end_reason="expired",
        ),
        conditions=conditions,
    )
    patched: Any = objects.patch_namespaced_custom_object_status(
        resource.GROUP,
        resource.VERSION,
        namespace,
        resource.PLURAL,
        "lobby",
        {"status": resource.to_json(status)},
    )
    assert resource.parse_status(patched["status"]) == status
    # Status is a subresource: writing it does not bump the generation.
    assert patched["metadata"]["generation"] == 1


def _spec(**source: Any) -> dict[str, Any]:
    return {"source": source}


INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "two-sources",
        _spec(testPattern={}, url={"url": "https://x/live.m3u8"}),
        ["spec.source", "exactly one of rtsp, url, file, testPattern"],
    ),
    ("no-source", _spec(), ["spec.source", "exactly one"]),
    ("no-spec-source", {}, ["spec.source", "Required value"]),
    (
        "rtsp-credentials",
        _spec(rtsp={"url": "rtsp://admin:hunter2@10.0.0.12/stream1"}),
        ["spec.source.rtsp.url", "credentials", "credentialsSecretRef"],
    ),
    (
        "rtsp-user-only",
        _spec(rtsp={"url": "rtsps://admin@cam.local/stream1"}),
        ["spec.source.rtsp.url", "credentialsSecretRef"],
    ),
    (
        "url-credentials",
        _spec(url={"url": "https://me:pw@cdn.example.com/live.m3u8"}),
        ["spec.source.url.url", "credentialsSecretRef"],
    ),
    (
        "rtsp-http-scheme",
        _spec(rtsp={"url": "http://10.0.0.12/stream1"}),
        ["spec.source.rtsp.url", "rtsp://"],
    ),
    (
        "url-rtsp-scheme",
        _spec(url={"url": "rtsp://10.0.0.12/stream1"}),
        ["spec.source.url.url", "http://"],
    ),
    (
        "rtsp-bad-transport",
        _spec(rtsp={"url": "rtsp://cam/1", "transport": "QUIC"}),
        ["spec.source.rtsp.transport", "Unsupported value"],
    ),
    (
        "interval-too-long",
        {"source": {"testPattern": {}}, "keepaliveIntervalSeconds": 300},
        ["spec.keepaliveIntervalSeconds", "240"],
    ),
    (
        "interval-too-short",
        {"source": {"testPattern": {}}, "keepaliveIntervalSeconds": 5},
        ["spec.keepaliveIntervalSeconds", "30"],
    ),
    (
        "relative-file",
        _spec(file={"path": "media/clip.mp4"}),
        ["spec.source.file.path", "absolute"],
    ),
    (
        "dotdot-file",
        _spec(file={"path": "/media/../etc/passwd"}),
        ["spec.source.file.path", ".."],
    ),
    (
        "file-two-volumes",
        _spec(
            file={
                "path": "/media/clip.mp4",
                "volume": {"configMap": {"name": "a"}, "hostPath": {"path": "/srv"}},
            }
        ),
        ["spec.source.file.volume", "exactly one"],
    ),
    (
        "file-mount-elsewhere",
        _spec(
            file={
                "path": "/media/clip.mp4",
                "mountPath": "/data",
                "volume": {"configMap": {"name": "a"}},
            }
        ),
        ["spec.source.file.mountPath", "contain spec.source.file.path"],
    ),
    (
        "max-fps-zero",
        {"source": {"testPattern": {}}, "video": {"maxFps": 0}},
        ["spec.video.maxFps", "1"],
    ),
    (
        "max-height-huge",
        {"source": {"testPattern": {}}, "video": {"maxHeight": 4320}},
        ["spec.video.maxHeight", "2160"],
    ),
    (
        "pattern-odd",
        _spec(testPattern={"width": 641}),
        ["spec.source.testPattern.width", "even"],
    ),
    (
        "pattern-too-wide",
        _spec(testPattern={"width": 7680}),
        ["spec.source.testPattern.width", "3840"],
    ),
    (
        "pattern-unknown",
        _spec(testPattern={"pattern": "plasma"}),
        ["spec.source.testPattern.pattern", "Unsupported value"],
    ),
    (
        "on-remote-end",
        {"source": {"testPattern": {}}, "onRemoteEnd": "Retry"},
        ["spec.onRemoteEnd", "Unsupported value"],
    ),
    (
        "url-too-long",
        _spec(url={"url": "https://x/" + "a" * 2100}),
        ["spec.source.url.url", "2048"],
    ),
]


@pytest.mark.parametrize(("name", "spec", "fragments"), INVALID, ids=[case[0] for case in INVALID])
def test_invalid_resources_are_refused_naming_the_field(
    objects: client.CustomObjectsApi,
    namespace: str,
    name: str,
    spec: dict[str, Any],
    fragments: list[str],
) -> None:
    message = _refusal(objects, namespace, name, spec)
    for fragment in fragments:
        assert fragment in message, message


def test_long_names_are_refused(objects: client.CustomObjectsApi, namespace: str) -> None:
    message = _refusal(objects, namespace, "x" * 54, VALID_SPECS["pattern"])
    assert "metadata.name" in message
    _create(objects, namespace, "x" * 53, VALID_SPECS["pattern"])


def test_updates_are_validated_too(objects: client.CustomObjectsApi, namespace: str) -> None:
    _create(objects, namespace, "cam", VALID_SPECS["rtsp"])
    bad = copy.deepcopy(VALID_SPECS["rtsp"])
    bad["source"]["rtsp"]["url"] = "rtsp://admin:pw@10.0.0.12/stream1"
    with pytest.raises(ApiException) as caught:
        objects.patch_namespaced_custom_object(
            resource.GROUP,
            resource.VERSION,
            namespace,
            resource.PLURAL,
            "cam",
            {"spec": bad},
        )
    assert caught.value.status == 422
    assert "spec.source.rtsp.url" in json.loads(caught.value.body or "{}")["message"]


def test_short_name_and_category_are_discoverable(
    kube_api: client.ApiClient, crd_installed: None
) -> None:
    resources = client.CustomObjectsApi(kube_api).get_api_resources(
        resource.GROUP, resource.VERSION
    )
    (ovs,) = [r for r in resources.resources if r.name == resource.PLURAL]
    assert ovs.short_names == ["ovs"]
    assert ovs.categories == ["overshoot"]
    (status,) = [r for r in resources.resources if r.name == f"{resource.PLURAL}/status"]
    assert status is not None


def test_apply_yaml_of_an_example(
    apply_yaml: ApplyYaml, namespace: str, crd_installed: None
) -> None:
    """Server-side apply (kubectl apply --server-side) of a YAML resource, as a user would."""
    (applied,) = apply_yaml(
        """
        apiVersion: overshoot.ai/v1alpha1
        kind: OvershootStream
        metadata: {name: lobby}
        spec:
          source:
            rtsp: {url: "rtsp://10.0.0.12:554/stream1", transport: TCP,
                   credentialsSecretRef: {name: lobby-cam}}
          video: {mode: Auto, maxHeight: 720, maxFps: 15}
        """,
        namespace=namespace,
    )
    assert applied["spec"]["source"]["rtsp"]["transport"] == "TCP"
