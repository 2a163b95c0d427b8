"""The manifest builders: the publish Secret, the publisher Pod and its replacement hash."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from overshoot_operator.manifests import (
    STREAM_LABEL,
    ManifestError,
    build_publish_secret,
    build_publisher_pod,
    child_labels,
    desired_config_hash,
    owner_reference,
    pod_config_hash,
    publisher_config,
)
from overshoot_operator.registry import PodFacts
from overshoot_operator.resource import (
    API_VERSION,
    KIND,
    MAX_NAME_LENGTH,
    PUBLISHER_CONFIG_HASH_ANNOTATION,
    EffectiveSpec,
    ResourceRequirements,
    SecretKeySelector,
    SpecDefaults,
    effective_spec,
    parse_spec,
)
from overshoot_operator.settings import OperatorSettings
from overshoot_publisher.config import (
    CREDENTIALS_PASSWORD_FILE,
    CREDENTIALS_USERNAME_FILE,
    ENV_VAR,
    PUBLISH_SECRET_DIR,
    PUBLISH_STREAM_ID_KEY,
    PUBLISH_TOKEN_KEY,
    PUBLISH_URL_KEY,
    SOURCE_CREDENTIALS_DIR,
    PublisherConfig,
)


def pod_needs_replacement(existing: dict[str, Any], desired: dict[str, Any]) -> bool:
    """The controller's comparison (children.py): the running Pod as the Pod watch sees
    it against the Pod rendered for the spec."""
    facts = PodFacts.from_body(existing, hash_annotation=PUBLISHER_CONFIG_HASH_ANNOTATION)
    return facts.config_hash != desired_config_hash(desired)


pytestmark = pytest.mark.unit

TOKEN = "eyJhbGciOiJIUzI1NiJ9.sample-room-token.c2lnbmF0dXJl"
UID = "7f0c3f8e-2b4f-4d5e-9a51-0d1f3c6b9e21"

SETTINGS = OperatorSettings(
    publisher_image="ghcr.io/overshoot-ai/overshoot-operator:0.1.0",
    publisher_image_pull_policy="IfNotPresent",
    publisher_health_port=8080,
)

DEFAULTS = SpecDefaults(
    api_key_secret=SecretKeySelector(
        namespace="overshoot-system", name="overshoot-api-key", key="apiKey"
    ),
    publisher_image="ghcr.io/overshoot-ai/overshoot-operator:0.1.0",
    publisher_resources=ResourceRequirements(
        requests={"cpu": "100m", "memory": "128Mi"},
        limits={"cpu": 1, "memory": "384Mi"},
    ),
)

RTSP_SPEC: dict[str, Any] = {
    "source": {
        "rtsp": {
            "url": "rtsp://10.0.0.12:554/stream1",
            "credentialsSecretRef": {
                "name": "lobby-cam",
                "usernameKey": "user",
                "passwordKey": "pw",
            },
        }
    },
    "video": {"mode": "Transcode", "maxHeight": 480, "maxFps": 10},
}


def make_resource(
    name: str = "lobby",
    spec: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": "cameras",
            "uid": UID,
            "generation": 3,
            "labels": labels
            if labels is not None
            else {
                "app.kubernetes.io/instance": "cameras-app",
                "argocd.argoproj.io/instance": "cameras-app",
                "team": "video",
            },
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        },
        "spec": spec if spec is not None else RTSP_SPEC,
    }


def effective(resource: dict[str, Any]) -> EffectiveSpec:
    return effective_spec(parse_spec(resource["spec"]), DEFAULTS, namespace="cameras")


def render(resource: dict[str, Any]) -> dict[str, Any]:
    return build_publisher_pod(resource, effective(resource), SETTINGS)


def container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [v for v in pod["spec"]["volumes"] if v["name"] == name]
    assert len(matches) == 1, name
    result: dict[str, Any] = matches[0]
    return result


def mount(pod: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [m for m in container(pod)["volumeMounts"] if m["name"] == name]
    assert len(matches) == 1, name
    result: dict[str, Any] = matches[0]
    return result


# --- Ownership and labels ---------------------------------------------------------------


def test_owner_reference() -> None:
    assert owner_reference(make_resource()) == {
        "apiVersion": "overshoot.ai/v1alpha1",
        "kind": "OvershootStream",
        "name": "lobby",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_owner_reference_needs_a_uid() -> None:
    resource = make_resource()
    del resource["metadata"]["uid"]
    with pytest.raises(ManifestError, match="uid"):
        owner_reference(resource)


def test_child_labels_are_the_allow_list() -> None:
    assert STREAM_LABEL == "overshoot.ai/stream"
    assert child_labels("lobby") == {
        "app.kubernetes.io/name": "overshoot-publisher",
        "app.kubernetes.io/instance": "lobby",
        "app.kubernetes.io/managed-by": "overshoot-operator",
        "overshoot.ai/stream": "lobby",
    }


def test_child_labels_refuse_names_that_are_not_label_values() -> None:
    longest = "a" * MAX_NAME_LENGTH
    assert child_labels(longest)[STREAM_LABEL] == longest
    with pytest.raises(ManifestError, match="label value"):
        child_labels("a" * (MAX_NAME_LENGTH + 1))
    with pytest.raises(ManifestError):
        child_labels("-lobby")


@pytest.mark.parametrize("kind", ["secret", "pod"])
def test_children_do_not_copy_the_resource_labels(kind: str) -> None:
    resource = make_resource()
    child = (
        build_publish_secret(resource, url="wss://lk", token=TOKEN, stream_id="s1")
        if kind == "secret"
        else render(resource)
    )
    meta = child["metadata"]
    assert meta["labels"] == child_labels("lobby")
    assert "argocd.argoproj.io/instance" not in json.dumps(child)
    assert "team" not in meta["labels"]
    assert meta["namespace"] == "cameras"
    assert meta["ownerReferences"] == [owner_reference(resource)]
    # Nothing of the resource's annotations either.
    assert "kubectl.kubernetes.io/last-applied-configuration" not in meta.get("annotations", {})


def test_names_and_labels_fit_kubernetes_limits_at_the_longest_name() -> None:
    name = "c" * MAX_NAME_LENGTH
    resource = make_resource(name=name)
    pod = render(resource)
    secret = build_publish_secret(resource, url="wss://lk", token=TOKEN, stream_id="s1")
    for obj in (pod, secret):
        assert len(obj["metadata"]["name"]) <= 63
        for key, value in obj["metadata"]["labels"].items():
            assert len(value) <= 63, key
            assert len(key.rsplit("/", 1)[-1]) <= 63, key
    assert pod["metadata"]["name"] == f"{name}-publisher"
    assert secret["metadata"]["name"] == f"{name}-publish"
    # Volume and container names are DNS labels too.
    for v in pod["spec"]["volumes"]:
        assert len(v["name"]) <= 63
    assert len(container(pod)["ports"][0]["name"]) <= 15


# --- The publish Secret -----------------------------------------------------------------


def test_publish_secret() -> None:
    secret = build_publish_secret(
        make_resource(), url="wss://livekit.example", token=TOKEN, stream_id="2ea5a604"
    )
    assert secret["apiVersion"] == "v1"
    assert secret["kind"] == "Secret"
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["name"] == "lobby-publish"
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {
        PUBLISH_URL_KEY: "wss://livekit.example",
        PUBLISH_TOKEN_KEY: TOKEN,
        PUBLISH_STREAM_ID_KEY: "2ea5a604",
    }
    assert "annotations" not in secret["metadata"]


# --- The publisher Pod ------------------------------------------------------------------


def test_pod_identity_and_container() -> None:
    pod = render(make_resource())
    assert pod["apiVersion"] == "v1"
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["name"] == "lobby-publisher"
    c = container(pod)
    assert c["name"] == "publisher"
    assert c["image"] == "ghcr.io/overshoot-ai/overshoot-operator:0.1.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"] == ["overshoot-publisher"]
    assert "args" not in c
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Always"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["terminationGracePeriodSeconds"] == 15


def test_image_and_pull_policy_follow_spec_and_settings() -> None:
    resource = make_resource(spec={**RTSP_SPEC, "publisher": {"image": "example.com/p:dev"}})
    settings = OperatorSettings(publisher_image_pull_policy="Always")
    pod = build_publisher_pod(resource, effective(resource), settings)
    assert container(pod)["image"] == "example.com/p:dev"
    assert container(pod)["imagePullPolicy"] == "Always"


def test_the_token_is_nowhere_in_the_pod() -> None:
    resource = make_resource()
    spec = effective(resource)
    build_publish_secret(resource, url="wss://lk", token=TOKEN, stream_id="s1")
    pod = build_publisher_pod(resource, spec, SETTINGS)
    rendered = json.dumps(pod)
    assert TOKEN not in rendered
    assert base64.b64encode(TOKEN.encode()).decode() not in rendered
    # Only the config variable is in the env, and it names no token.
    env = container(pod)["env"]
    assert [e["name"] for e in env] == [ENV_VAR]
    assert all("valueFrom" not in e for e in env)
    assert "token" not in env[0]["value"].lower()


def test_env_round_trips_through_the_publisher_parser() -> None:
    resource = make_resource()
    spec = effective(resource)
    pod = build_publisher_pod(resource, spec, SETTINGS)
    environ = {e["name"]: e["value"] for e in container(pod)["env"]}
    parsed = PublisherConfig.from_env(environ)
    expected = publisher_config(resource["metadata"], spec, SETTINGS)
    assert parsed == expected
    assert parsed.namespace == "cameras"
    assert parsed.name == "lobby"
    assert parsed.source == spec.source
    assert parsed.video == spec.video
    assert parsed.secret_dir == PUBLISH_SECRET_DIR
    assert parsed.credentials_dir == SOURCE_CREDENTIALS_DIR
    assert parsed.health_port == 8080


def test_publish_secret_is_a_directory_volume() -> None:
    pod = render(make_resource())
    v = volume(pod, "publish")
    assert v["secret"]["secretName"] == "lobby-publish"
    assert v["secret"]["defaultMode"] in (0o440, 0o400)
    assert "items" not in v["secret"]
    m = mount(pod, "publish")
    assert m["mountPath"] == PUBLISH_SECRET_DIR
    assert m["readOnly"] is True
    # subPath mounts never receive Secret updates: the rotated token would never arrive.
    for each in container(pod)["volumeMounts"]:
        assert "subPath" not in each
        assert "subPathExpr" not in each


def test_source_credentials_are_projected_onto_fixed_file_names() -> None:
    pod = render(make_resource())
    v = volume(pod, "source-credentials")
    assert v["secret"]["secretName"] == "lobby-cam"
    assert v["secret"]["items"] == [
        {"key": "user", "path": CREDENTIALS_USERNAME_FILE},
        {"key": "pw", "path": CREDENTIALS_PASSWORD_FILE},
    ]
    assert v["secret"]["defaultMode"] in (0o440, 0o400)
    m = mount(pod, "source-credentials")
    assert m["mountPath"] == SOURCE_CREDENTIALS_DIR
    assert m["readOnly"] is True


@pytest.mark.parametrize(
    "source",
    [
        {"testPattern": {}},
        {"url": {"url": "https://example.com/live.m3u8"}},
        {"rtsp": {"url": "rtsp://10.0.0.12/stream1"}},
        {"file": {"path": "/usr/share/clip.mp4"}},
    ],
)
def test_no_credentials_no_credentials_volume(source: dict[str, Any]) -> None:
    resource = make_resource(spec={"source": source})
    pod = render(resource)
    names = [v["name"] for v in pod["spec"]["volumes"]]
    assert "source-credentials" not in names
    config = PublisherConfig.from_env({e["name"]: e["value"] for e in container(pod)["env"]})
    assert config.credentials_dir is None
    # A file baked into the image needs no volume.
    assert "media" not in names


def test_url_source_credentials_are_mounted_too() -> None:
    source = {
        "url": {"url": "https://example.com/live.m3u8", "credentialsSecretRef": {"name": "web"}}
    }
    pod = render(make_resource(spec={"source": source}))
    assert volume(pod, "source-credentials")["secret"]["items"] == [
        {"key": "username", "path": "username"},
        {"key": "password", "path": "password"},
    ]


@pytest.mark.parametrize(
    ("file_volume", "expected"),
    [
        (
            {"persistentVolumeClaim": {"claimName": "media"}},
            {"persistentVolumeClaim": {"claimName": "media", "readOnly": True}},
        ),
        ({"configMap": {"name": "clips"}}, {"configMap": {"name": "clips"}}),
        ({"hostPath": {"path": "/srv/media"}}, {"hostPath": {"path": "/srv/media"}}),
    ],
)
def test_file_source_volume_is_mounted_read_only(
    file_volume: dict[str, Any], expected: dict[str, Any]
) -> None:
    source = {"file": {"path": "/media/clips/clip.mp4", "loop": True, "volume": file_volume}}
    pod = render(make_resource(spec={"source": source}))
    assert volume(pod, "media") == {"name": "media", **expected}
    assert mount(pod, "media") == {"name": "media", "mountPath": "/media/clips", "readOnly": True}


def test_file_source_mount_path_is_honoured() -> None:
    source = {
        "file": {
            "path": "/media/clips/clip.mp4",
            "mountPath": "/media",
            "volume": {"persistentVolumeClaim": {"claimName": "media"}},
        }
    }
    pod = render(make_resource(spec={"source": source}))
    assert mount(pod, "media")["mountPath"] == "/media"


@pytest.mark.parametrize(
    "file",
    [
        {"path": "/tmp/clip.mp4"},
        {"path": "/var/run/overshoot/clip.mp4"},
        {"path": "/var/run/overshoot/publish/clip.mp4"},
        {"path": "/var/clip.mp4", "mountPath": "/var"},
        {"path": "/dev/shm/clip.mp4"},
    ],
)
def test_file_source_mount_colliding_with_the_publishers_own_is_refused(
    file: dict[str, Any],
) -> None:
    source = {"file": {**file, "volume": {"configMap": {"name": "clips"}}}}
    with pytest.raises(ManifestError, match=r"cameras/lobby: spec\.source\.file"):
        render(make_resource(spec={"source": source}))


def test_tmp_is_a_writable_empty_dir() -> None:
    pod = render(make_resource())
    assert "emptyDir" in volume(pod, "tmp")
    m = mount(pod, "tmp")
    assert m["mountPath"] == "/tmp"
    assert m.get("readOnly", False) is False


def test_restricted_security_context() -> None:
    pod = render(make_resource())
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    sc = container(pod)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("privileged", False) is False
    assert "hostNetwork" not in pod["spec"]
    assert "hostPID" not in pod["spec"]


def test_resources_from_the_effective_spec_as_strings() -> None:
    pod = render(make_resource())
    assert container(pod)["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "384Mi"},
    }


def test_empty_resources_are_omitted() -> None:
    resource = make_resource()
    spec = effective_spec(
        parse_spec(resource["spec"]),
        DEFAULTS.model_copy(update={"publisher_resources": ResourceRequirements()}),
        namespace="cameras",
    )
    pod = build_publisher_pod(resource, spec, SETTINGS)
    assert "resources" not in container(pod)


def test_only_requests_when_only_requests() -> None:
    resource = make_resource(spec={**RTSP_SPEC, "publisher": {"resources": {"requests": {}}}})
    spec = effective_spec(
        parse_spec(resource["spec"]),
        DEFAULTS.model_copy(
            update={"publisher_resources": ResourceRequirements(requests={"cpu": "50m"})}
        ),
        namespace="cameras",
    )
    pod = build_publisher_pod(resource, spec, SETTINGS)
    assert container(pod)["resources"] == {"requests": {"cpu": "50m"}}


def test_probes_on_the_named_health_port() -> None:
    settings = OperatorSettings(publisher_health_port=9191)
    resource = make_resource()
    pod = build_publisher_pod(resource, effective(resource), settings)
    c = container(pod)
    assert c["ports"] == [{"name": "health", "containerPort": 9191, "protocol": "TCP"}]
    ready, live = c["readinessProbe"], c["livenessProbe"]
    assert ready["httpGet"] == {"path": "/readyz", "port": "health"}
    assert live["httpGet"] == {"path": "/healthz", "port": "health"}
    assert ready["periodSeconds"] == 5
    assert live["initialDelaySeconds"] == 10
    assert live["periodSeconds"] == 10
    assert live["failureThreshold"] == 6
    config = PublisherConfig.from_env({e["name"]: e["value"] for e in c["env"]})
    assert config.health_port == 9191


def test_scheduling_fields_from_the_spec() -> None:
    publisher = {
        "nodeSelector": {"kubernetes.io/arch": "arm64"},
        "tolerations": [
            {"key": "camera", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}
        ],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "priorityClassName": "video",
        "imagePullSecrets": [{"name": "registry"}],
    }
    resource = make_resource(spec={**RTSP_SPEC, "publisher": publisher})
    spec = effective(resource)
    pod = build_publisher_pod(resource, spec, SETTINGS)
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert pod["spec"]["tolerations"] == publisher["tolerations"]
    assert pod["spec"]["affinity"] == publisher["affinity"]
    assert pod["spec"]["priorityClassName"] == "video"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    # The manifest is a copy: changing it leaves the spec model alone.
    pod["spec"]["affinity"]["nodeAffinity"] = {}
    assert spec.publisher.affinity == publisher["affinity"]


def test_unset_scheduling_fields_are_omitted() -> None:
    pod = render(make_resource())
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"):
        assert key not in pod["spec"], key


def test_the_pod_is_plain_json() -> None:
    pod = render(make_resource())
    assert json.loads(json.dumps(pod)) == pod


# --- Replacement ------------------------------------------------------------------------


def test_config_hash_annotation() -> None:
    pod = render(make_resource())
    value = pod["metadata"]["annotations"][PUBLISHER_CONFIG_HASH_ANNOTATION]
    assert value == pod_config_hash(pod)
    assert len(value) == 16
    assert int(value, 16) >= 0
    assert list(pod["metadata"]["annotations"]) == [PUBLISHER_CONFIG_HASH_ANNOTATION]


def test_hash_is_stable() -> None:
    first, second = render(make_resource()), render(make_resource())
    assert pod_config_hash(first) == pod_config_hash(second)
    # Key order does not matter.
    reordered = json.loads(json.dumps(first["spec"], sort_keys=True))
    reordered = dict(reversed(list(reordered.items())))
    assert pod_config_hash({"spec": reordered}) == pod_config_hash(first)


def test_hash_ignores_resource_labels_annotations_and_generation() -> None:
    a = render(make_resource())
    changed = make_resource(labels={"argocd.argoproj.io/instance": "other", "x": "y"})
    changed["metadata"]["annotations"]["note"] = "hello"
    changed["metadata"]["generation"] = 9
    b = render(changed)
    assert pod_config_hash(a) == pod_config_hash(b)
    assert not pod_needs_replacement(a, b)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["source"]["rtsp"].update(url="rtsp://10.0.0.13/stream2"),
        lambda s: s["source"]["rtsp"].update(transport="UDP"),
        lambda s: s["source"]["rtsp"]["credentialsSecretRef"].update(name="other"),
        lambda s: s["video"].update(maxFps=5),
        lambda s: s.update(publisher={"image": "example.com/p:2"}),
        lambda s: s.update(publisher={"resources": {"limits": {"memory": "1Gi"}}}),
        lambda s: s.update(publisher={"nodeSelector": {"zone": "a"}}),
    ],
)
def test_hash_changes_with_anything_the_pod_runs(change: Any) -> None:
    before = render(make_resource())
    spec = copy.deepcopy(RTSP_SPEC)
    change(spec)
    after = render(make_resource(spec=spec))
    assert pod_config_hash(before) != pod_config_hash(after)
    assert pod_needs_replacement(before, after)


def test_hash_does_not_change_with_operator_only_fields() -> None:
    # Keepalive cadence, the API key and suspend/onRemoteEnd are the operator's business.
    before = render(make_resource())
    spec = {
        **copy.deepcopy(RTSP_SPEC),
        "keepaliveIntervalSeconds": 60,
        "apiKeySecretRef": {"name": "mine"},
        "onRemoteEnd": "Fail",
    }
    after = render(make_resource(spec=spec))
    assert not pod_needs_replacement(before, after)


def test_needs_replacement_compares_the_annotation() -> None:
    desired = render(make_resource())
    # What the API server returns has defaults filled in; only the annotation counts.
    existing = copy.deepcopy(desired)
    existing["spec"]["dnsPolicy"] = "ClusterFirst"
    existing["spec"]["nodeName"] = "node-1"
    existing["metadata"]["uid"] = "abc"
    assert not pod_needs_replacement(existing, desired)
    del existing["metadata"]["annotations"][PUBLISHER_CONFIG_HASH_ANNOTATION]
    assert pod_needs_replacement(existing, desired)
    existing["metadata"]["annotations"][PUBLISHER_CONFIG_HASH_ANNOTATION] = "0" * 16
    assert pod_needs_replacement(existing, desired)
    # A desired Pod without the annotation is hashed on the spot.
    bare = copy.deepcopy(desired)
    del bare["metadata"]["annotations"]
    assert not pod_needs_replacement(desired, bare)


def test_the_hash_does_not_carry_the_token() -> None:
    # The annotation is derived from the Pod spec, which never sees the token, so rotating
    # the token never replaces the Pod (the kubelet updates the mounted files instead).
    resource = make_resource()
    build_publish_secret(resource, url="wss://lk", token=TOKEN, stream_id="s1")
    a = render(resource)
    build_publish_secret(resource, url="wss://lk2", token=TOKEN + "x", stream_id="s2")
    b = render(resource)
    assert not pod_needs_replacement(a, b)
