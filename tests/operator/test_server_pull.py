"""Delivery ServerPull and Auto on a real control plane: Overshoot (the emulator, under
/v1beta) pulls a real RTSP camera itself, so there is no publisher Pod and no publish
Secret, status tells the truth from `last_pull`, the camera's password travels only in the
create request, a camera Overshoot cannot open is a condition that is not retried blindly,
Auto picks and falls back, a live resource switches delivery without two live streams,
and every call names the stream's region (a region_error is followed).

The emulator runs with private sources allowed (the camera is on loopback) and the operator
with `server_pull_networks=127.0.0.0/8` where Auto must count loopback as reachable.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from fixtures.cluster import wait_for
from fixtures.emulator import PULL_REGIONS
from fixtures.operator import API_KEY, put_api_key
from fixtures.streams import (
    condition,
    create_stream,
    delete_stream,
    events,
    get_stream,
    patch_stream,
    publish_secret,
    publisher_pod,
    status,
    stream_gone,
    stream_manifest,
)
from overshoot_localstack.emulator import EmulatorProcess
from overshoot_localstack.rtsp import RtspServer, free_port
from overshoot_operator import resource as res

pytestmark = pytest.mark.integration

PASSWORD = "cam-pw-9d71e0b5"
LOOPBACK = "127.0.0.0/8"


@pytest.fixture
def camera() -> Iterator[RtspServer]:
    with RtspServer(username="viewer", password=PASSWORD) as server:
        yield server


def v1beta(emulator: EmulatorProcess) -> str:
    return emulator.url + "/v1beta"


def put_camera_secret(api: client.ApiClient, namespace: str, password: str = PASSWORD) -> None:
    core = client.CoreV1Api(api)
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "lobby-cam"},
        "data": {
            "username": base64.b64encode(b"viewer").decode(),
            "password": base64.b64encode(password.encode()).decode(),
        },
    }
    try:
        core.create_namespaced_secret(namespace, body)
    except client.ApiException as err:
        if err.status != 409:
            raise
        core.replace_namespaced_secret("lobby-cam", namespace, body)


def pulled(camera_url: str, **spec: Any) -> dict[str, Any]:
    return stream_manifest(
        "lobby",
        source={"rtsp": {"url": camera_url, "credentialsSecretRef": {"name": "lobby-cam"}}},
        **spec,
    )


def active_streams(emulator: EmulatorProcess) -> list[dict[str, Any]]:
    return emulator.admin.streams(state="active")


def wait_phase(api: client.ApiClient, namespace: str, phase: str, timeout: float = 60) -> None:
    wait_for(
        lambda: status(api, namespace, "lobby").get("phase") == phase,
        timeout,
        what=f"phase {phase}",
    )


def ready_reason(api: client.ApiClient, namespace: str) -> str | None:
    return condition(api, namespace, "lobby", "Ready").get("reason")


def test_a_pulled_camera_publishes_without_a_pod_and_its_password_stays_in_the_request(
    kube_api, namespace, pulling_emulator, pulling_emulator_log, run_operator, camera
):
    put_api_key(kube_api, namespace)
    put_camera_secret(kube_api, namespace)
    operator = run_operator(pulling_emulator, api_url=v1beta(pulling_emulator))
    create_stream(kube_api, namespace, pulled(camera.url, delivery="ServerPull"))

    wait_phase(kube_api, namespace, "Publishing")
    st = status(kube_api, namespace, "lobby")
    assert st["delivery"] == "ServerPull"
    assert st["region"] == PULL_REGIONS[0]
    assert st["streamRevision"]
    assert "secretName" not in st and "publisherPod" not in st
    first_pull = st["stream"]["lastPullAt"]
    assert condition(kube_api, namespace, "lobby", "Publishing")["reason"] == "FramesArriving"
    # Overshoot keeps pulling: status follows it.
    wait_for(
        lambda: status(kube_api, namespace, "lobby")["stream"]["lastPullAt"] != first_pull,
        30,
        what="status.stream.lastPullAt to move",
    )
    assert publisher_pod(kube_api, namespace, "lobby") is None
    assert publish_secret(kube_api, namespace, "lobby") is None
    (remote,) = active_streams(pulling_emulator)
    assert remote["id"] == st["streamId"]
    assert pulling_emulator.admin.calls(API_KEY)["create"] == 1
    printer = get_stream(kube_api, namespace, "lobby")
    assert printer["metadata"]["annotations"][res.STREAM_ID_ANNOTATION] == st["streamId"]

    # The password went to Overshoot in the create request and nowhere else.
    everywhere = {
        "resource": json.dumps(get_stream(kube_api, namespace, "lobby")),
        "events": json.dumps([e.to_dict() for e in events(kube_api, namespace)], default=str),
        "operator log": operator.logs(),
        "emulator log": pulling_emulator_log.read_text(),
        "emulator's stream listing": json.dumps(pulling_emulator.admin.streams()),
    }
    for where, text in everywhere.items():
        assert PASSWORD not in text, where

    delete_stream(kube_api, namespace, "lobby")
    wait_for(lambda: stream_gone(kube_api, namespace, "lobby"), what="resource gone")
    assert active_streams(pulling_emulator) == []


def test_a_camera_overshoot_cannot_open_waits_for_a_change(
    kube_api, namespace, pulling_emulator, run_operator
):
    """Overshoot answers 422 after its own retries: a user-fixable condition, no blind
    retry (the camera coming back is not enough), and a new try once the user says so."""
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/stream1"
    put_api_key(kube_api, namespace)
    put_camera_secret(kube_api, namespace)
    run_operator(pulling_emulator, api_url=v1beta(pulling_emulator))
    created = time.monotonic()
    create_stream(kube_api, namespace, pulled(url, delivery="ServerPull"))

    wait_for(
        lambda: ready_reason(kube_api, namespace) == "SourceUnreachable",
        60,
        what="Ready reason SourceUnreachable",
    )
    print(f"SourceUnreachable {time.monotonic() - created:.1f} s after the apply")
    ready = condition(kube_api, namespace, "lobby", "Ready")
    assert ready["status"] == "False"
    assert "spec.source.rtsp" in ready["message"] and res.REFRESH_ANNOTATION in ready["message"]
    st = status(kube_api, namespace, "lobby")
    assert st["phase"] == "Pending" and "streamId" not in st
    assert st["delivery"] == "ServerPull"
    assert active_streams(pulling_emulator) == []
    assert any(e.reason == "SourceUnreachable" for e in events(kube_api, namespace))

    with RtspServer(port=port, username="viewer", password=PASSWORD):
        # The passing of time is what this is about: past one recheck of the credentials
        # Secret (15 s), nothing changed that the operator can see, so no new create.
        time.sleep(20)
        assert pulling_emulator.admin.calls(API_KEY)["create"] == 1
        assert ready_reason(kube_api, namespace) == "SourceUnreachable"

        patch_stream(
            kube_api,
            namespace,
            "lobby",
            {"metadata": {"annotations": {res.REFRESH_ANNOTATION: "camera-fixed"}}},
        )
        wait_phase(kube_api, namespace, "Publishing")
    assert pulling_emulator.admin.calls(API_KEY)["create"] == 2


def test_a_changed_camera_password_replaces_the_pulled_stream(
    kube_api, namespace, pulling_emulator, run_operator, camera
):
    """A wrong password is refused by the camera, so Overshoot cannot open it (422); fixing
    the password in the Secret is noticed (its version is part of what a stream pulls)."""
    put_api_key(kube_api, namespace)
    put_camera_secret(kube_api, namespace, password="wrong-password-1")
    run_operator(pulling_emulator, api_url=v1beta(pulling_emulator))
    create_stream(kube_api, namespace, pulled(camera.url, delivery="ServerPull"))
    wait_for(
        lambda: ready_reason(kube_api, namespace) == "SourceUnreachable",
        60,
        what="Ready reason SourceUnreachable (wrong password)",
    )
    put_camera_secret(kube_api, namespace)
    wait_phase(kube_api, namespace, "Publishing", timeout=60)
    assert pulling_emulator.admin.calls(API_KEY)["create"] == 2


def test_auto_pulls_a_reachable_camera_and_publishes_the_rest(
    kube_api, namespace, pulling_emulator, run_operator, camera
):
    put_api_key(kube_api, namespace)
    put_camera_secret(kube_api, namespace)
    run_operator(pulling_emulator, api_url=v1beta(pulling_emulator), server_pull_networks=LOOPBACK)
    create_stream(kube_api, namespace, pulled(camera.url, delivery="Auto"))
    create_stream(
        kube_api,
        namespace,
        {
            **pulled(camera.url, delivery="Auto", video={"maxHeight": 360}),
            "metadata": {"name": "limited"},
        },
    )
    create_stream(kube_api, namespace, stream_manifest("pattern", delivery="Auto"))
    wait_phase(kube_api, namespace, "Publishing")
    assert status(kube_api, namespace, "lobby")["delivery"] == "ServerPull"
    assert publisher_pod(kube_api, namespace, "lobby") is None
    for name in ("limited", "pattern"):
        wait_for(
            lambda name=name: publisher_pod(kube_api, namespace, name),
            what=f"{name}'s publisher Pod",
        )
        assert status(kube_api, namespace, name)["delivery"] == "Publisher"
    created = [e for e in events(kube_api, namespace) if e.reason == "StreamCreated"]
    messages = {e.involved_object.name: e.message for e in created}
    assert "spec.video is set" in messages["limited"]
    assert "cannot pull a testPattern" in messages["pattern"]
    assert "reachable" in messages["lobby"]


def test_auto_falls_back_to_a_publisher_when_overshoot_cannot_open_the_camera(
    kube_api, namespace, pulling_emulator, run_operator
):
    url = f"rtsp://127.0.0.1:{free_port()}/stream1"
    put_api_key(kube_api, namespace)
    put_camera_secret(kube_api, namespace)
    run_operator(pulling_emulator, api_url=v1beta(pulling_emulator), server_pull_networks=LOOPBACK)
    create_stream(kube_api, namespace, pulled(url, delivery="Auto"))
    wait_for(lambda: publisher_pod(kube_api, namespace, "lobby"), 90, what="a publisher Pod")
    st = wait_for(
        lambda: (s := status(kube_api, namespace, "lobby")).get("streamId") and s,
        what="a stream for the publisher",
    )
    assert st["delivery"] == "Publisher"
    assert publish_secret(kube_api, namespace, "lobby") is not None
    fallback = [e for e in events(kube_api, namespace) if e.reason == "DeliveryFallback"]
    assert len(fallback) == 1 and "Could not connect" in fallback[0].message
    # One refused pull (nothing made), one stream for the publisher.
    assert pulling_emulator.admin.calls(API_KEY)["create"] == 2
    assert len(active_streams(pulling_emulator)) == 1


def test_switching_delivery_on_a_live_resource_never_runs_two_streams(
    kube_api, namespace, pulling_emulator, run_operator, camera
):
    put_api_key(kube_api, namespace)
    put_camera_secret(kube_api, namespace)
    run_operator(pulling_emulator, api_url=v1beta(pulling_emulator))
    create_stream(kube_api, namespace, pulled(camera.url, delivery="Publisher"))
    publisher_stream = wait_for(
        lambda: publish_secret(kube_api, namespace, "lobby"), what="the publish Secret"
    )["streamId"]
    wait_for(lambda: publisher_pod(kube_api, namespace, "lobby"), what="the publisher Pod")

    most = 0

    def switched(to: str) -> str:
        nonlocal most
        most = max(most, len(active_streams(pulling_emulator)))
        st = status(kube_api, namespace, "lobby")
        return st.get("delivery") == to and st.get("phase") == "Publishing" and st["streamId"]

    patch_stream(kube_api, namespace, "lobby", {"spec": {"delivery": "ServerPull"}})
    pulled_stream = wait_for(
        lambda: switched("ServerPull"), 60, interval=0.05, what="ServerPull Publishing"
    )
    assert pulled_stream != publisher_stream
    wait_for(lambda: publisher_pod(kube_api, namespace, "lobby") is None, what="the Pod removed")
    assert publish_secret(kube_api, namespace, "lobby") is None
    old = pulling_emulator.admin.stream(publisher_stream)
    assert old is not None and old["end_reason"] == "deleted"
    assert any(e.reason == "StreamReplaced" for e in events(kube_api, namespace))

    patch_stream(kube_api, namespace, "lobby", {"spec": {"delivery": "Publisher"}})
    wait_for(lambda: publisher_pod(kube_api, namespace, "lobby"), what="a publisher Pod again")
    back = wait_for(
        lambda: (
            (s := status(kube_api, namespace, "lobby")).get("delivery") == "Publisher"
            and s.get("streamId")
        ),
        what="a stream for the publisher again",
    )
    assert back != pulled_stream
    assert pulling_emulator.admin.stream(pulled_stream)["end_reason"] == "deleted"
    most = max(most, len(active_streams(pulling_emulator)))
    assert most == 1


def test_a_quiet_camera_is_source_stale_not_a_failed_stream(
    kube_api, namespace, pulling_emulator, run_operator, camera
):
    put_api_key(kube_api, namespace)
    put_camera_secret(kube_api, namespace)
    run_operator(pulling_emulator, api_url=v1beta(pulling_emulator))
    create_stream(kube_api, namespace, pulled(camera.url, delivery="ServerPull"))
    wait_phase(kube_api, namespace, "Publishing")
    stream_id = status(kube_api, namespace, "lobby")["streamId"]

    camera.kill()
    wait_for(
        lambda: ready_reason(kube_api, namespace) == "SourceStale", 60, what="Ready SourceStale"
    )
    st = status(kube_api, namespace, "lobby")
    assert st["phase"] == "Degraded" and st["streamId"] == stream_id
    assert condition(kube_api, namespace, "lobby", "StreamActive")["status"] == "True"
    assert condition(kube_api, namespace, "lobby", "Publishing")["reason"] == "SourceStale"

    camera.start()
    wait_phase(kube_api, namespace, "Publishing", timeout=90)
    assert status(kube_api, namespace, "lobby")["streamId"] == stream_id


def test_server_pull_against_an_api_without_camera_sources_says_so(
    kube_api, namespace, pulling_emulator, run_operator, camera
):
    """/v1 ignores a create's source (the conservative reading of an older API): the
    operator notices the publish token it did not ask for, releases that stream and says
    what to change."""
    put_api_key(kube_api, namespace)
    put_camera_secret(kube_api, namespace)
    run_operator(pulling_emulator, api_url=pulling_emulator.url + "/v1")
    create_stream(kube_api, namespace, pulled(camera.url, delivery="ServerPull"))
    wait_for(
        lambda: ready_reason(kube_api, namespace) == "ServerPullUnsupported",
        60,
        what="Ready ServerPullUnsupported",
    )
    assert "/v1beta" in condition(kube_api, namespace, "lobby", "Ready")["message"]
    assert active_streams(pulling_emulator) == []
    assert publisher_pod(kube_api, namespace, "lobby") is None


def test_streams_are_pinned_to_their_region_and_a_region_error_is_followed(
    kube_api, namespace, pulling_emulator, run_operator
):
    """spec.region creates there; a stream adopted by annotation from another region is
    found by following the API's region_error; both keep working when requests without a
    region header would reach another region."""
    home, other = PULL_REGIONS
    adopted = pulling_emulator.admin.create_stream(API_KEY, region=other)["id"]
    put_api_key(kube_api, namespace)
    run_operator(pulling_emulator)
    create_stream(kube_api, namespace, stream_manifest("west", region=other))
    adopting = stream_manifest("adopted")
    adopting["metadata"]["annotations"] = {res.STREAM_ID_ANNOTATION: adopted}
    create_stream(kube_api, namespace, adopting)

    west = wait_for(
        lambda: (s := status(kube_api, namespace, "west")).get("region") == other and s,
        what="west created in its region",
    )
    wait_for(
        lambda: status(kube_api, namespace, "adopted").get("region") == other,
        what="the adopted stream's region, learnt from a region_error",
    )
    assert status(kube_api, namespace, "adopted")["streamId"] == adopted
    assert pulling_emulator.admin.stream(west["streamId"])["region"] == other

    # Requests without a region header reach `home`; these streams live in `other`.
    assert pulling_emulator.admin.region() == home
    for name in ("west", "adopted"):
        stream_id = status(kube_api, namespace, name)["streamId"]
        pulling_emulator.admin.frames(stream_id, count=20, fps=10)
    for name in ("west", "adopted"):
        wait_for(
            lambda name=name: status(kube_api, namespace, name).get("phase") == "Publishing",
            what=f"{name} Publishing (its polls reach its region)",
        )
    assert len(active_streams(pulling_emulator)) == 2
