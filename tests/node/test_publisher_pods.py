"""The operator's publisher Pods as real containers: the image built from the Dockerfile,
run by a real kubelet + containerd (`overshoot_localstack.node`) in a namespace that
enforces Pod Security `restricted`, publishing over the Pod network into a real LiveKit
server, with the emulator as Overshoot and its media gateway counting frames.

The Pods reach only the node's host: LiveKit and the sources listen on the node's address
(`netns.HostAddress`), as a camera on the LAN and a LiveKit server outside the cluster would.

What a user meets and these assert: the stream reaches Publishing from the container;
`kubectl logs` and `kubectl describe pod` work; a recreated stream's Secret reaches the
running container through the kubelet (the operator's Pod annotation makes it sync at once)
and frames arrive in the new room; a rotated token reaches the container on the kubelet's
own schedule; a wrong camera password ends in the Pod's termination message, crash-loops
with the kubelet's backoff, and shows in the resource's status.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from nodekit import PodStack

from fixtures.cluster import wait_for
from fixtures.operator import put_api_key
from fixtures.streams import condition, create_stream, publisher_pod, status, stream_manifest
from overshoot_localstack import binaries
from overshoot_localstack import cluster as localcluster
from overshoot_localstack.media import FileServer, HlsSource, make_audio_clip
from overshoot_localstack.rtsp import RtspServer, free_port
from overshoot_operator import resource as res
from overshoot_publisher.config import PUBLISH_SECRET_DIR, PUBLISH_TOKEN_KEY

pytestmark = pytest.mark.integration

FRAMES_TIMEOUT = 180.0  # a cold container start: the image's Python and media stack


@pytest.fixture
def cams(kube_api: client.ApiClient, namespace: str) -> str:
    """The test's namespace, enforcing Pod Security `restricted`, with the API key."""
    client.CoreV1Api(kube_api).patch_namespace(
        namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    put_api_key(kube_api, namespace)
    return namespace


def on_the_node(stack: PodStack) -> dict[str, Any]:
    scheduling = stack.run.node.scheduling()
    return {"nodeSelector": scheduling["nodeSelector"], "tolerations": scheduling["tolerations"]}


def start_operator(run_operator: Any, stack: PodStack, **settings: Any) -> Any:
    return run_operator(
        stack.emulator,
        publisher_image=stack.image,
        # Imported into the node's containerd; there is no registry to pull from.
        publisher_image_pull_policy="Never",
        **settings,
    )


def camera_secret(api: client.ApiClient, namespace: str, password: str) -> None:
    """Secret `lobby-cam` with the camera's credentials (user `viewer`)."""
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "lobby-cam"},
            "stringData": {"username": "viewer", "password": password},
        },
    )


def wait_publisher_failing(api: client.ApiClient, namespace: str, timeout: float) -> Any:
    """The `Ready` condition once its reason is PublisherFailing."""
    return wait_for(
        lambda: (
            (c := condition(api, namespace, "lobby", "Ready"))["reason"] == "PublisherFailing" and c
        ),
        timeout,
        what="Ready False with reason PublisherFailing",
    )


def kubectl(cluster: localcluster.ControlPlane, *args: str) -> str:
    binary = binaries.ensure(["kubectl"])["kubectl"]
    result = subprocess.run(
        [str(binary), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def publish_secret_data(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    secret = core.read_namespaced_secret(res.publish_secret_name(name), namespace)
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def in_root(root: Path, path: str) -> Path:
    """`path` inside a container's root filesystem `root` (/proc/<pid>/root), with the
    container's absolute symlinks (the image's /var/run -> /run) resolved against that
    root, not against the host's as the kernel would from out here."""
    resolved = root
    parts = [p for p in path.split("/") if p]
    for _ in range(40):  # symlink hops, like the kernel's limit
        if not parts:
            return resolved
        candidate = resolved / parts.pop(0)
        if candidate.is_symlink():
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = root
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved = candidate
    raise AssertionError(f"too many symlinks resolving {path} in {root}")


def mounted(stack: PodStack, pod: client.V1Pod, key: str) -> str | None:
    """A file of the publish Secret volume as the running container sees it."""
    statuses = pod.status.container_statuses or []
    if not statuses or not statuses[0].container_id or not statuses[0].state.running:
        return None
    pid = stack.run.node.container_pid(statuses[0].container_id)
    try:
        return in_root(Path(f"/proc/{pid}/root"), f"{PUBLISH_SECRET_DIR}/{key}").read_text()
    except OSError:
        return None


def wait_publishing(api: client.ApiClient, stack: PodStack, namespace: str, name: str) -> str:
    stream_id: str = wait_for(
        lambda: status(api, namespace, name).get("streamId"), 60, what="status.streamId"
    )
    wait_for(
        lambda: stack.frames(stream_id) > 0,
        FRAMES_TIMEOUT,
        what=f"frames of stream {stream_id} at the gateway",
    )
    wait_for(
        lambda: status(api, namespace, name).get("phase") == "Publishing",
        60,
        what=f"{name} Publishing",
    )
    return stream_id


def test_a_publisher_container_reaches_publishing(
    pod_stack: PodStack,
    cluster: localcluster.ControlPlane,
    kube_api: client.ApiClient,
    cams: str,
    run_operator: Any,
    measured: dict[str, str],
) -> None:
    start_operator(run_operator, pod_stack)
    created = time.monotonic()
    create_stream(
        kube_api,
        cams,
        stream_manifest(
            "lobby",
            source={"testPattern": {"pattern": "ball", "width": 640, "height": 360, "fps": 15}},
            publisher=on_the_node(pod_stack),
        ),
    )
    stream_id = wait_publishing(kube_api, pod_stack, cams, "lobby")
    measured["apply -> Publishing from a publisher container (image cached on the node)"] = (
        f"{time.monotonic() - created:.1f} s"
    )
    first = pod_stack.frames(stream_id)
    wait_for(lambda: pod_stack.frames(stream_id) > first + 15, 30, what="frames keep coming")

    pod = publisher_pod(kube_api, cams, "lobby")
    assert pod.spec.node_name == pod_stack.run.node.name
    assert pod.status.pod_ip and pod.status.pod_ip.startswith("10.217.")
    (container,) = pod.status.container_statuses
    assert container.image == pod_stack.image or container.image.endswith(pod_stack.image)
    # Readiness is the publisher's own /readyz: ready once frames flow.
    wait_for(
        lambda: publisher_pod(kube_api, cams, "lobby").status.container_statuses[0].ready,
        30,
        what="the publisher container Ready",
    )
    assert container.restart_count == 0
    assert pod.metadata.annotations[res.PUBLISH_STREAM_ANNOTATION] == stream_id

    logs = kubectl(cluster, "logs", "-n", cams, "lobby-publisher")
    assert f"for stream {stream_id}" in logs, logs
    assert "Publishing" in logs, logs
    secret = publish_secret_data(client.CoreV1Api(kube_api), cams, "lobby")
    assert secret[PUBLISH_TOKEN_KEY] not in logs
    described = kubectl(cluster, "describe", "pod", "-n", cams, "lobby-publisher")
    assert f"Node:             {pod_stack.run.node.name}/" in described, described
    assert "Readiness:" in described and "/readyz" in described, described


@pytest.mark.parametrize("kind", ["rtsp", "hls"])
def test_a_camera_on_the_network_publishes_from_the_container(
    kind: str,
    pod_stack: PodStack,
    kube_api: client.ApiClient,
    cams: str,
    run_operator: Any,
) -> None:
    """The sources a user points at: an RTSP camera with credentials and a live HLS
    stream, both on the node's network, pulled by the publisher over the Pod network."""
    with contextlib.ExitStack() as stack:
        if kind == "rtsp":
            camera = stack.enter_context(
                RtspServer(address=pod_stack.node_ip, username="viewer", password="pw-5e1b")
            )
            camera_secret(kube_api, cams, "pw-5e1b")
            source = {"rtsp": {"url": camera.url, "credentialsSecretRef": {"name": "lobby-cam"}}}
        else:
            hls = HlsSource(address=pod_stack.node_ip)
            hls.start()
            stack.callback(hls.stop)
            source = {"url": {"url": hls.url}}
        start_operator(run_operator, pod_stack)
        create_stream(
            kube_api,
            cams,
            stream_manifest("lobby", source=source, publisher=on_the_node(pod_stack)),
        )
        stream_id = wait_publishing(kube_api, pod_stack, cams, "lobby")
        first = pod_stack.frames(stream_id)
        wait_for(lambda: pod_stack.frames(stream_id) > first + 10, 30, what="frames keep coming")


def pod_ready(api: client.ApiClient, namespace: str, name: str) -> bool:
    pod = publisher_pod(api, namespace, name)
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def test_a_camera_outage_is_unready_then_resumes_without_a_restart(
    pod_stack: PodStack,
    kube_api: client.ApiClient,
    cams: str,
    run_operator: Any,
) -> None:
    """The camera goes away for a while: the kubelet's readiness probe takes the Pod out
    of Ready, the resource stops being Publishing, and once the camera is back frames flow
    again from the same container (the publisher reconnects; the kubelet restarts nothing)."""
    with RtspServer(address=pod_stack.node_ip) as camera:
        start_operator(run_operator, pod_stack)
        create_stream(
            kube_api,
            cams,
            stream_manifest(
                "lobby", source={"rtsp": {"url": camera.url}}, publisher=on_the_node(pod_stack)
            ),
        )
        stream_id = wait_publishing(kube_api, pod_stack, cams, "lobby")
        wait_for(lambda: pod_ready(kube_api, cams, "lobby"), 30, what="the Pod Ready")

        camera.kill()
        wait_for(lambda: not pod_ready(kube_api, cams, "lobby"), 60, what="the Pod unready")
        wait_for(
            lambda: condition(kube_api, cams, "lobby", "Publishing")["reason"] == "FramesStopped",
            60,
            what="Publishing False, FramesStopped",
        )

        camera.start()
        resumed = pod_stack.frames(stream_id)
        wait_for(lambda: pod_stack.frames(stream_id) > resumed + 10, 90, what="frames again")
        wait_for(lambda: pod_ready(kube_api, cams, "lobby"), 60, what="the Pod Ready again")
        wait_for(
            lambda: status(kube_api, cams, "lobby").get("phase") == "Publishing",
            60,
            what="Publishing again",
        )
        pod = publisher_pod(kube_api, cams, "lobby")
        assert pod.status.container_statuses[0].restart_count == 0


def test_a_livekit_restart_is_survived_by_the_running_container(
    pod_stack: PodStack,
    kube_api: client.ApiClient,
    cams: str,
    run_operator: Any,
) -> None:
    """LiveKit is killed and comes back 15 s later on the same address: the publisher in
    the container rejoins the room and frames flow again, without a container restart."""
    start_operator(run_operator, pod_stack)
    create_stream(kube_api, cams, stream_manifest("lobby", publisher=on_the_node(pod_stack)))
    stream_id = wait_publishing(kube_api, pod_stack, cams, "lobby")

    pod_stack.livekit.restart(kill=True, down_for=15)
    resumed = pod_stack.frames(stream_id)
    wait_for(lambda: pod_stack.frames(stream_id) > resumed + 10, 120, what="frames again")
    wait_for(
        lambda: status(kube_api, cams, "lobby").get("phase") == "Publishing",
        60,
        what="Publishing again",
    )
    pod = publisher_pod(kube_api, cams, "lobby")
    assert pod.status.container_statuses[0].restart_count == 0


def joined_at(cluster: localcluster.ControlPlane, namespace: str, stream_id: str) -> float | None:
    """Wall time of the publisher's "Joined room ... for stream <id>" line, from the
    container runtime's own log timestamps (`kubectl logs --timestamps`)."""
    logs = kubectl(cluster, "logs", "--timestamps", "-n", namespace, "lobby-publisher")
    for line in logs.splitlines():
        stamp, _, text = line.partition(" ")
        if "Joined room" in text and f"for stream {stream_id}" in text:
            # RFC 3339 with nanoseconds; Python takes microseconds.
            head, _, rest = stamp.partition(".")
            fraction = rest.rstrip("Z")[:6]
            when = datetime.fromisoformat(f"{head}.{fraction or '0'}+00:00")
            return when.timestamp()
    return None


def test_a_recreated_stream_reaches_the_running_container(
    pod_stack: PodStack,
    cluster: localcluster.ControlPlane,
    kube_api: client.ApiClient,
    cams: str,
    run_operator: Any,
    measured: dict[str, str],
) -> None:
    """The remote stream is reaped; the operator recreates it, writes the Secret and
    annotates the Pod; the kubelet swaps the Secret into the running container, whose
    publisher follows it into the new room. Without the annotation, the kubelet would
    swap it at its next periodic sync (test_node measures that).

    Each step's first sighting is timed (wall clock), so a slow recreation names the
    step that was slow: the operator's record, the Pod annotation, the kubelet's volume
    swap, the publisher's join, the first frame at the gateway."""
    start_operator(run_operator, pod_stack)
    create_stream(
        kube_api,
        cams,
        stream_manifest("lobby", onRemoteEnd="Recreate", publisher=on_the_node(pod_stack)),
    )
    old = wait_publishing(kube_api, pod_stack, cams, "lobby")
    pod = publisher_pod(kube_api, cams, "lobby")
    pod_uid = pod.metadata.uid

    reaped = time.time()
    pod_stack.emulator.admin.reap(old)
    seen: dict[str, float] = {}
    new = ""

    def step(name: str, done: bool) -> None:
        if done and name not in seen:
            seen[name] = time.time()

    def all_seen() -> bool:
        nonlocal new
        sid = status(kube_api, cams, "lobby").get("streamId")
        if sid and sid != old:
            new = sid
        step("status.streamId", bool(new))
        if not new:
            return False
        annotations = publisher_pod(kube_api, cams, "lobby").metadata.annotations or {}
        step("Pod annotated", annotations.get(res.PUBLISH_STREAM_ANNOTATION) == new)
        step("Secret in the container", mounted(pod_stack, pod, "streamId") == new)
        step("first frame at the gateway", pod_stack.frames(new) > 0)
        return "first frame at the gateway" in seen and "Secret in the container" in seen

    wait_for(all_seen, 120, interval=0.1, what="the new stream's steps")
    joined = wait_for(lambda: joined_at(cluster, cams, new), 30, what="the publisher's join")
    pod = publisher_pod(kube_api, cams, "lobby")
    # The same container followed; nothing was restarted or replaced.
    assert pod.metadata.uid == pod_uid
    assert pod.status.container_statuses[0].restart_count == 0
    assert pod.metadata.annotations[res.PUBLISH_STREAM_ANNOTATION] == new
    wait_for(
        lambda: status(kube_api, cams, "lobby").get("phase") == "Publishing",
        60,
        what="Publishing in the new stream",
    )
    recreated = seen["status.streamId"]
    arrived = seen["first frame at the gateway"]
    stages = {**seen, "publisher joined the room": joined}
    breakdown = ", ".join(
        f"{name} +{when - recreated:.1f}"
        for name, when in sorted(stages.items(), key=lambda i: i[1])
    )
    measured["stream reaped -> new stream recorded"] = f"{recreated - reaped:.1f} s"
    measured["new stream recorded -> its first frame (running container, real kubelet)"] = (
        f"{arrived - recreated:.1f} s ({breakdown})"
    )
    print(f"reaped -> recreated {recreated - reaped:.1f} s; after that: {breakdown}")
    # What the publisher said meanwhile, with the runtime's timestamps: the first place to
    # look when the join is the slow step.
    logs = kubectl(cluster, "logs", "--timestamps", "-n", cams, "lobby-publisher")
    since = datetime.fromtimestamp(reaped, UTC).isoformat(timespec="seconds")[:19]
    print("\n".join(line for line in logs.splitlines() if line[:19] >= since))


def test_a_rotated_token_reaches_the_container_on_the_kubelets_schedule(
    pod_stack: PodStack,
    kube_api: client.ApiClient,
    cams: str,
    run_operator: Any,
    measured: dict[str, str],
) -> None:
    """Token rotations are not announced to the kubelet (see children.py): the new token
    reaches the volume at the kubelet's next periodic sync, while the old one still works."""
    start_operator(run_operator, pod_stack)
    create_stream(
        kube_api,
        cams,
        stream_manifest("lobby", keepaliveIntervalSeconds=30, publisher=on_the_node(pod_stack)),
    )
    wait_publishing(kube_api, pod_stack, cams, "lobby")
    core = client.CoreV1Api(kube_api)
    pod = publisher_pod(kube_api, cams, "lobby")
    in_container = wait_for(
        lambda: mounted(pod_stack, pod, PUBLISH_TOKEN_KEY), 30, what="a token in the container"
    )
    # Time the next rotation from the moment it is written: the container may still lag
    # behind one the Secret had before.
    known = {in_container, publish_secret_data(core, cams, "lobby")[PUBLISH_TOKEN_KEY]}
    rotated: str = wait_for(
        lambda: (
            (t := publish_secret_data(core, cams, "lobby")[PUBLISH_TOKEN_KEY]) not in known and t
        ),
        90,
        what="a keepalive to rotate the token in the Secret",
    )
    written = time.monotonic()
    swapped_in: str = wait_for(
        lambda: (t := mounted(pod_stack, pod, PUBLISH_TOKEN_KEY)) not in known and t,
        240,
        interval=0.5,
        what="the rotated token in the container's volume",
    )
    swapped = time.monotonic()
    # A later keepalive may have rotated it again meanwhile; either is newer.
    assert swapped_in in {rotated, publish_secret_data(core, cams, "lobby")[PUBLISH_TOKEN_KEY]}
    assert condition(kube_api, cams, "lobby", "Publishing")["status"] == "True"
    measured["token rotated in the Secret -> in the container (no annotation)"] = (
        f"{swapped - written:.1f} s"
    )


def test_a_wrong_camera_password_is_a_termination_message_and_a_status(
    pod_stack: PodStack,
    cluster: localcluster.ControlPlane,
    kube_api: client.ApiClient,
    cams: str,
    run_operator: Any,
) -> None:
    right, wrong = "pw-right-7f3a9c", "pw-wrong-91c2d4"
    with RtspServer(address=pod_stack.node_ip, username="viewer", password=right) as camera:
        camera_secret(kube_api, cams, wrong)
        start_operator(run_operator, pod_stack)
        create_stream(
            kube_api,
            cams,
            stream_manifest(
                "lobby",
                source={"rtsp": {"url": camera.url, "credentialsSecretRef": {"name": "lobby-cam"}}},
                publisher=on_the_node(pod_stack),
            ),
        )

        def crash_looping() -> Any:
            pod = publisher_pod(kube_api, cams, "lobby")
            statuses = (pod.status.container_statuses or []) if pod else []
            if not statuses or statuses[0].restart_count < 2:
                return None
            return statuses[0]

        container = wait_for(crash_looping, FRAMES_TIMEOUT, what="the publisher restarted twice")
        terminated = container.last_state.terminated
        assert terminated is not None and terminated.exit_code == 3, container
        message = terminated.message or ""
        assert "credentials" in message.lower() or "401" in message, message
        assert wrong not in message and right not in message, message

        ready = wait_publisher_failing(kube_api, cams, 60)
        assert ready["status"] == "False"
        assert "code 3" in ready["message"], ready
        assert message.split()[0] in ready["message"], (message, ready)
        assert status(kube_api, cams, "lobby")["phase"] == "Degraded"
        assert wrong not in str(status(kube_api, cams, "lobby"))

        described = kubectl(cluster, "describe", "pod", "-n", cams, "lobby-publisher")
        assert "Exit Code:    3" in described, described
        events = kubectl(cluster, "get", "events", "-n", cams, "--field-selector", "reason=BackOff")
        assert "lobby-publisher" in events, events


def test_an_unreachable_camera_says_why_and_is_retried_by_the_kubelet(
    pod_stack: PodStack,
    kube_api: client.ApiClient,
    cams: str,
    run_operator: Any,
) -> None:
    """Nothing listens where the camera should be: after SOURCE_GIVE_UP_SECONDS without a
    frame the publisher exits with the cause, which the resource's status shows; the
    kubelet restarts it with its backoff."""
    closed = free_port(pod_stack.node_ip)  # bound and released: nothing listens there
    start_operator(run_operator, pod_stack)
    created = time.monotonic()
    create_stream(
        kube_api,
        cams,
        stream_manifest(
            "lobby",
            source={"rtsp": {"url": f"rtsp://{pod_stack.node_ip}:{closed}/stream1"}},
            publisher=on_the_node(pod_stack),
        ),
    )
    ready = wait_publisher_failing(kube_api, cams, 120)
    print(f"PublisherFailing {time.monotonic() - created:.0f} s after the apply: {ready}")
    assert "refused the connection" in ready["message"], ready
    assert "SourceUnreachable" in ready["message"], ready
    assert status(kube_api, cams, "lobby")["phase"] == "Degraded"
    wait_for(
        lambda: (
            publisher_pod(kube_api, cams, "lobby").status.container_statuses[0].restart_count >= 1
        ),
        120,
        what="the kubelet to restart the publisher",
    )


FIRST_FRAME_TIMEOUT = 45.0  # past the publisher's own 20 s give-up on a source


def released_for_the_source(api: client.ApiClient, namespace: str, timeout: float) -> Any:
    """The Ready condition once the stream was released because no frame ever came."""
    return wait_for(
        lambda: (
            (c := condition(api, namespace, "lobby", "Ready"))["reason"] == "WaitingForSource" and c
        ),
        timeout,
        what="Ready False with reason WaitingForSource (the stream released)",
    )


@pytest.mark.parametrize("case", ["refused", "no-video", "wrong-password"])
def test_a_camera_that_never_delivers_costs_no_lease(
    case: str,
    pod_stack: PodStack,
    kube_api: client.ApiClient,
    cams: str,
    run_operator: Any,
    tmp_path: Path,
) -> None:
    """Each broken camera says why within about 30 s of the apply (the publisher's exit,
    in the Pod's termination message); once no frame has reached Overshoot within the
    bound, the remote stream is released and none is renewed while the camera is broken:
    the publisher Pod stays and keeps being restarted by the kubelet."""
    with contextlib.ExitStack() as stack:
        if case == "refused":
            source: dict[str, Any] = {
                "rtsp": {"url": f"rtsp://{pod_stack.node_ip}:{free_port(pod_stack.node_ip)}/s"}
            }
            said = "refused the connection"
        elif case == "no-video":
            make_audio_clip(tmp_path / "tone.ts")
            files = stack.enter_context(FileServer(tmp_path, address=pod_stack.node_ip))
            source = {"url": {"url": files.url("tone.ts")}}
            said = "SourceHasNoVideo"
        else:
            camera = stack.enter_context(
                RtspServer(address=pod_stack.node_ip, username="viewer", password="right-pw")
            )
            camera_secret(kube_api, cams, "wrong-pw")
            source = {"rtsp": {"url": camera.url, "credentialsSecretRef": {"name": "lobby-cam"}}}
            said = "credentials"
        start_operator(run_operator, pod_stack, first_frame_timeout_seconds=FIRST_FRAME_TIMEOUT)
        created = time.monotonic()
        create_stream(
            kube_api,
            cams,
            stream_manifest("lobby", source=source, publisher=on_the_node(pod_stack)),
        )
        stream_id = wait_for(
            lambda: status(kube_api, cams, "lobby").get("streamId"), 60, what="a stream"
        )
        failing = wait_publisher_failing(kube_api, cams, 90)
        told = time.monotonic() - created
        assert said in failing["message"], failing
        released = released_for_the_source(kube_api, cams, FIRST_FRAME_TIMEOUT + 60)
        print(
            f"{case}: cause in status {told:.0f} s, released {time.monotonic() - created:.0f} s after the apply"
        )
        assert said in released["message"], released
        st = status(kube_api, cams, "lobby")
        assert "streamId" not in st and st["phase"] == "Pending"
        remote = pod_stack.emulator.admin.stream(stream_id)
        assert remote is not None and remote["end_reason"] == "deleted"
        assert not [
            s for s in pod_stack.emulator.admin.streams(state="active") if s["id"] == stream_id
        ]
        # The Pod stays, told of no stream, and its source keeps being retried.
        pod = publisher_pod(kube_api, cams, "lobby")
        assert pod.metadata.annotations[res.PUBLISH_STREAM_ANNOTATION] == ""
        restarts = pod.status.container_statuses[0].restart_count
        wait_for(
            lambda: (
                publisher_pod(kube_api, cams, "lobby").status.container_statuses[0].restart_count
                > restarts
            ),
            180,
            what="the kubelet to try the source again",
        )
        assert "streamId" not in status(kube_api, cams, "lobby")


def test_a_dead_camera_that_comes_up_gets_a_stream_again(
    pod_stack: PodStack,
    kube_api: client.ApiClient,
    cams: str,
    run_operator: Any,
) -> None:
    port = free_port(pod_stack.node_ip)
    start_operator(run_operator, pod_stack, first_frame_timeout_seconds=FIRST_FRAME_TIMEOUT)
    create_stream(
        kube_api,
        cams,
        stream_manifest(
            "lobby",
            source={"rtsp": {"url": f"rtsp://{pod_stack.node_ip}:{port}/stream1"}},
            publisher=on_the_node(pod_stack),
        ),
    )
    released_for_the_source(kube_api, cams, FIRST_FRAME_TIMEOUT + 90)
    pod_uid = publisher_pod(kube_api, cams, "lobby").metadata.uid
    with RtspServer(address=pod_stack.node_ip, port=port):
        up = time.monotonic()
        # The kubelet restarts the publisher on its backoff; in standby its readiness says
        # the camera delivers, and the operator creates a stream for it.
        stream_id = wait_for(
            lambda: status(kube_api, cams, "lobby").get("streamId"),
            330,
            what="a new stream once the camera delivers",
        )
        wait_for(lambda: pod_stack.frames(stream_id) > 0, 60, what="frames in the new stream")
        wait_for(
            lambda: status(kube_api, cams, "lobby").get("phase") == "Publishing",
            60,
            what="Publishing",
        )
        print(f"camera up -> Publishing in {time.monotonic() - up:.0f} s")
        assert publisher_pod(kube_api, cams, "lobby").metadata.uid == pod_uid
