"""The publisher Pod is told of the stream its Secret names: created with the annotation,
annotated once when the stream changes, never for a Pod that is going away."""

from __future__ import annotations

from typing import Any, cast

import pytest

from overshoot_operator import resource as res
from overshoot_operator.children import Children, PodState
from overshoot_operator.kube import ConflictError, Kube, NotFoundError
from overshoot_operator.registry import Entry, Observed, PodFacts
from overshoot_operator.resource import SecretKeySelector, SpecDefaults, effective_spec, parse_spec
from overshoot_operator.settings import OperatorSettings

pytestmark = pytest.mark.unit

NS, NAME, UID = "cams", "lobby", "uid-1"
OLD, NEW = "stream-old", "stream-new"
SPEC = {"source": {"testPattern": {}}}
SETTINGS = OperatorSettings(publisher_image="example.org/publisher:1")
DEFAULTS = SpecDefaults(
    api_key_secret=SecretKeySelector(namespace=NS, name="key", key="apiKey"),
    publisher_image="example.org/publisher:1",
)


class FakeKube:
    """Records the Pod calls; `annotate_error` is raised by the next annotate."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.annotated: list[tuple[str, str, str, dict[str, str]]] = []
        self.annotate_error: Exception | None = None

    async def create_pod(self, manifest: dict[str, Any], *, dry_run: bool = False) -> Any:
        self.created.append(manifest)
        return {**manifest, "metadata": {**manifest["metadata"], "uid": "pod-uid"}}

    async def annotate_pod(
        self, namespace: str, name: str, *, uid: str, annotations: dict[str, str]
    ) -> None:
        self.annotated.append((namespace, name, uid, dict(annotations)))
        if self.annotate_error is not None:
            raise self.annotate_error


def observed() -> Observed:
    return Observed.from_body(
        {
            "metadata": {
                "namespace": NS,
                "name": NAME,
                "uid": UID,
                "generation": 1,
                "resourceVersion": "7",
            },
            "spec": SPEC,
        }
    )


def setup(pod: PodFacts | None) -> tuple[FakeKube, Children, Entry, Observed, Any]:
    kube = FakeKube()
    children = Children(cast(Kube, kube), SETTINGS)
    entry = Entry((NS, NAME))
    obs = observed()
    spec = effective_spec(parse_spec(SPEC), DEFAULTS, namespace=NS)
    if pod is not None:
        # The Pod the builder renders, as the watch would have delivered it.
        desired = children.desired_pod(entry, obs, spec)
        pod = PodFacts(
            uid=pod.uid,
            phase=pod.phase,
            ready=pod.ready,
            deleting=pod.deleting,
            config_hash=desired.config_hash,
            owner_uid=UID,
            publish_stream=pod.publish_stream,
        )
    entry.pod = pod
    return kube, children, entry, obs, spec


def running(publish_stream: str | None, *, deleting: bool = False) -> PodFacts:
    return PodFacts(
        uid="pod-uid",
        phase="Running",
        ready=True,
        deleting=deleting,
        config_hash=None,
        owner_uid=UID,
        publish_stream=publish_stream,
    )


async def test_a_new_pod_is_created_naming_the_stream_and_the_cache_stays_clean() -> None:
    kube, children, entry, obs, spec = setup(None)
    assert await children.ensure_pod(entry, obs, spec, NEW) is PodState.CREATED
    (created,) = kube.created
    assert created["metadata"]["annotations"][res.PUBLISH_STREAM_ANNOTATION] == NEW
    assert res.PUBLISHER_CONFIG_HASH_ANNOTATION in created["metadata"]["annotations"]
    # The rendering cached for this generation is not changed in place.
    cached = children.desired_pod(entry, obs, spec).manifest
    assert res.PUBLISH_STREAM_ANNOTATION not in cached["metadata"]["annotations"]
    assert entry.pod is not None and entry.pod.publish_stream == NEW
    assert kube.annotated == []


@pytest.mark.parametrize(
    ("pod", "stream_id", "annotated"),
    [
        pytest.param(running(NEW), NEW, False, id="already-told"),
        pytest.param(running(OLD), NEW, True, id="stream-changed"),
        pytest.param(running(None), NEW, True, id="pod-from-an-older-operator"),
        pytest.param(running(OLD), None, False, id="no-secret-yet"),
        pytest.param(running(OLD, deleting=True), NEW, False, id="pod-terminating"),
    ],
)
async def test_a_running_pod_is_annotated_only_when_its_stream_changed(
    pod: PodFacts, stream_id: str | None, annotated: bool
) -> None:
    kube, children, entry, obs, spec = setup(pod)
    await children.ensure_pod(entry, obs, spec, stream_id)
    expected = [(NS, f"{NAME}-publisher", "pod-uid", {res.PUBLISH_STREAM_ANNOTATION: NEW})]
    assert kube.annotated == (expected if annotated else [])
    assert kube.created == []


async def test_the_annotation_is_sent_once_until_the_watch_catches_up() -> None:
    kube, children, entry, obs, spec = setup(running(OLD))
    for _ in range(3):
        assert await children.ensure_pod(entry, obs, spec, NEW) is PodState.READY_AS_WANTED
    assert len(kube.annotated) == 1


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(NotFoundError("Patch Pod: 404", status=404), id="pod-gone"),
        pytest.param(ConflictError("Patch Pod: 409", status=409), id="pod-replaced"),
    ],
)
async def test_a_pod_gone_meanwhile_is_left_to_the_pod_watch(error: Exception) -> None:
    kube, children, entry, obs, spec = setup(running(OLD))
    kube.annotate_error = error
    assert await children.ensure_pod(entry, obs, spec, NEW) is PodState.READY_AS_WANTED
    assert len(kube.annotated) == 1
