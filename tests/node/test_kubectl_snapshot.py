"""`kubectl overshoot` (the `kubectl-overshoot` console script) against the real stack, as a
fleet operator runs it: "is camera 37 really showing the loading dock?".

The stack is tests/node's: the control plane, a real node running the publisher container
of the project's image, a LiveKit server on the node's address, the emulator as Overshoot
(minting real subscribe-only viewer tokens) with its media gateway, and the operator under
its own ServiceAccount. A test-pattern OvershootStream (SMPTE bars, 640x360) reaches
Publishing; then, as subprocesses with their own kubeconfig:

- `snapshot` writes a 640x360 JPEG whose seven top bars have SMPTE's colours;
- `get` shows the stream Publishing with its fps and the age of its last frame;
- a ServiceAccount that may read OvershootStreams but not Secrets gets one clear line and
  exit code 1 (no node needed: the Secret read comes before Overshoot and LiveKit).

Neither the API key nor any token appears in what the plugin prints.
"""

from __future__ import annotations

import colorsys
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import pytest
from kubernetes import client
from nodekit import PodStack

from fixtures.cluster import ApplyYaml, SaKubeconfig, wait_for
from fixtures.operator import API_KEY, put_api_key
from fixtures.streams import (
    GROUP,
    PLURAL,
    VERSION,
    create_stream,
    publish_secret,
    status,
    stream_manifest,
)
from overshoot_localstack import cluster as localcluster
from overshoot_localstack import image

# Generous: a cold run builds the image and starts the node inside the first test.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

PLUGIN = str(Path(sys.executable).with_name("kubectl-overshoot"))
WIDTH, HEIGHT = 640, 360
FRAMES_TIMEOUT = 180.0  # a cold container start: the image's Python and media stack

# The seven top bars of SMPTE colour bars (FFmpeg's smptebars), left to right, 75 %
# intensity: the name and hue in degrees (None: grey, no hue).
SMPTE_BARS: list[tuple[str, float | None]] = [
    ("grey", None),
    ("yellow", 60),
    ("cyan", 180),
    ("green", 120),
    ("magenta", 300),
    ("red", 0),
    ("blue", 240),
]


def kubectl_overshoot(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """The console script as a user runs it; only the given variables of the kube side."""
    base = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "OVERSHOOT_API_URL")}
    return subprocess.run(
        [PLUGIN, *args],
        env={**base, "HOME": str(cwd), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_no_secrets(result: subprocess.CompletedProcess[str], *secrets: str) -> None:
    printed = result.stdout + result.stderr
    for secret in (API_KEY, *secrets):
        assert secret not in printed
    # LiveKit tokens are JWTs: base64url of '{"' starts every one.
    assert "eyJ" not in printed


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    return result.stderr


def smpte_hues(path: Path) -> list[tuple[str, float, float, float]]:
    """(bar, hue in degrees, saturation, value) at the centre of each top bar."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    rgb = frame.to_ndarray(format="rgb24").astype(float) / 255
    height, width = rgb.shape[:2]
    y = height // 3  # the top bars fill the upper two thirds
    found = []
    for index, (name, _) in enumerate(SMPTE_BARS):
        x = round((index + 0.5) * width / len(SMPTE_BARS))
        r, g, b = rgb[y - 4 : y + 5, x - 4 : x + 5].reshape(-1, 3).mean(axis=0)
        hue, saturation, value = colorsys.rgb_to_hsv(r, g, b)
        found.append((name, hue * 360, saturation, value))
    return found


def hue_distance(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def test_snapshot_and_get_of_a_publishing_stream(
    pod_stack: PodStack,
    cluster: localcluster.ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
    run_operator: Any,
    tmp_path: Path,
) -> None:
    put_api_key(kube_api, namespace)
    run_operator(
        pod_stack.emulator,
        publisher_image=image.IMAGE,
        # Imported into the node's containerd; there is no registry to pull from.
        publisher_image_pull_policy="Never",
    )
    scheduling = pod_stack.run.node.scheduling()
    create_stream(
        kube_api,
        namespace,
        stream_manifest(
            "lobby",
            source={
                "testPattern": {"pattern": "smpte", "width": WIDTH, "height": HEIGHT, "fps": 15}
            },
            publisher={
                "nodeSelector": scheduling["nodeSelector"],
                "tolerations": scheduling["tolerations"],
            },
        ),
    )
    stream_id: str = wait_for(
        lambda: status(kube_api, namespace, "lobby").get("streamId"), 60, what="status.streamId"
    )
    # Full size at the gateway first: WebRTC may start a track small and grow it.
    wait_for(
        lambda: pod_stack.gateway(stream_id).get("width") == WIDTH,
        FRAMES_TIMEOUT,
        what=f"{WIDTH}-wide frames of stream {stream_id} at the gateway",
    )
    wait_for(
        lambda: status(kube_api, namespace, "lobby").get("phase") == "Publishing",
        60,
        what="lobby Publishing",
    )
    publish_token = (publish_secret(kube_api, namespace, "lobby") or {}).get("token", "")
    assert publish_token

    # snapshot, with KUBECONFIG and OVERSHOOT_API_URL as a user would set them.
    output = tmp_path / "lobby.jpg"
    started = time.monotonic()
    shot = kubectl_overshoot(
        "snapshot",
        "lobby",
        "-n",
        namespace,
        "-o",
        str(output),
        env={"KUBECONFIG": str(cluster.kubeconfig), "OVERSHOOT_API_URL": pod_stack.api_url},
        cwd=tmp_path,
    )
    took = time.monotonic() - started
    assert shot.returncode == 0, shot.stderr
    assert shot.stdout == f"Wrote {output} ({WIDTH}x{HEIGHT}) from stream {stream_id}\n"
    assert shot.stderr == ""
    assert_no_secrets(shot, publish_token)
    print(f"snapshot took {took:.1f} s (process start to exit)")
    with av.open(str(output)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    bars = smpte_hues(output)
    for (name, hue, saturation, value), (_, expected) in zip(bars, SMPTE_BARS, strict=True):
        assert value > 0.45, (name, bars)
        if expected is None:
            assert saturation < 0.2, (name, bars)
        else:
            assert saturation > 0.5 and hue_distance(hue, expected) < 25, (name, bars)

    # get, with --kubeconfig, in the namespace and across all of them.
    listed = kubectl_overshoot(
        "get", "-n", namespace, "--kubeconfig", str(cluster.kubeconfig), env={}, cwd=tmp_path
    )
    assert (listed.returncode, listed.stderr) == (0, "")
    header, *rows = listed.stdout.splitlines()
    assert re.split(r"\s{2,}", header) == [
        "NAME",
        "PHASE",
        "DELIVERY",
        "FPS",
        "LAST FRAME",
        "REGION",
        "REASON",
    ]
    (row,) = rows
    name, phase, delivery, fps, last_frame, *_ = re.split(r"\s{2,}", row)
    assert (name, phase) == ("lobby", "Publishing"), listed.stdout
    assert delivery == "Publisher", listed.stdout
    assert fps != "-" and float(fps) > 0, listed.stdout
    assert re.fullmatch(r"\d+s", last_frame), listed.stdout
    everywhere = kubectl_overshoot(
        "get", "-A", "--kubeconfig", str(cluster.kubeconfig), env={}, cwd=tmp_path
    )
    assert everywhere.returncode == 0, everywhere.stderr
    assert any(
        line.split()[:3] == [namespace, "lobby", "Publishing"]
        for line in everywhere.stdout.splitlines()
    )
    assert_no_secrets(listed, publish_token)


def test_rbac_decides_who_may_look(
    cluster: localcluster.ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
    operator_install: None,
    apply_yaml: ApplyYaml,
    sa_kubeconfig: SaKubeconfig,
    tmp_path: Path,
) -> None:
    """A ServiceAccount that may read OvershootStreams but not Secrets, and one that may
    read nothing: each gets one line naming what it may not read, and exit code 1."""
    put_api_key(kube_api, namespace)
    create_stream(kube_api, namespace, stream_manifest("lobby"))
    # A status as the operator writes it for a live stream; no operator runs here.
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "lobby",
        {
            "status": {
                "phase": "Publishing",
                "streamId": "2ea5a604-d225-4cd2-82ac-b907cb0b4f63",
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "Publishing",
                        "message": "Frames are reaching Overshoot",
                        "lastTransitionTime": "2026-12-01T12:00:00Z",
                    }
                ],
            }
        },
    )
    apply_yaml(
        f"""
        apiVersion: v1
        kind: ServiceAccount
        metadata: {{name: viewer, namespace: {namespace}}}
        ---
        apiVersion: v1
        kind: ServiceAccount
        metadata: {{name: nobody, namespace: {namespace}}}
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: Role
        metadata: {{name: stream-viewer, namespace: {namespace}}}
        rules:
          - apiGroups: [{GROUP}]
            resources: [{PLURAL}]
            verbs: [get, list, watch]
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: RoleBinding
        metadata: {{name: stream-viewer, namespace: {namespace}}}
        roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: stream-viewer}}
        subjects:
          - {{kind: ServiceAccount, name: viewer, namespace: {namespace}}}
        """
    )
    # Nothing past the Secret is reached; an API that cannot answer proves it.
    env = {"OVERSHOOT_API_URL": "http://127.0.0.1:9/v1beta"}

    viewer = str(sa_kubeconfig(namespace, "viewer"))
    refused = kubectl_overshoot(
        "snapshot", "lobby", "--kubeconfig", viewer, env=env, cwd=tmp_path, timeout=60
    )
    user = f"system:serviceaccount:{namespace}:viewer"
    assert one_error_line(refused) == (
        f"error: you may not read Secret {namespace}/overshoot-api-key (get secrets is "
        f"forbidden for user {user}); ask for access or pass --api-key-secret\n"
    )
    assert_no_secrets(refused)
    assert not (tmp_path / "lobby.jpg").exists()
    # The same user may list the streams (the context's namespace is the SA's).
    listed = kubectl_overshoot("get", "--kubeconfig", viewer, env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:2] == ["lobby", "Publishing"]

    nobody = str(sa_kubeconfig(namespace, "nobody"))
    hidden = kubectl_overshoot(
        "snapshot", "lobby", "--kubeconfig", nobody, env=env, cwd=tmp_path, timeout=60
    )
    assert one_error_line(hidden) == (
        f"error: you may not read OvershootStream {namespace}/lobby (get "
        f"overshootstreams.overshoot.ai is forbidden for user "
        f"system:serviceaccount:{namespace}:nobody); ask for `get` on "
        f"overshootstreams.overshoot.ai in {namespace}\n"
    )
