"""A real node (kubelet v1.36.3 + containerd + runc + CNI bridge, `overshoot_localstack.node`)
next to the session control plane's kwok Nodes: it registers and goes Ready, listens on its
own address only, takes only the Pods meant for it, runs a Pod with the publisher's
restricted security context from a locally imported image to Succeeded, serves its logs to
the API server, refreshes a mounted Secret, and leaves the host exactly as it found it, also
after its owning process was SIGKILLed.

These test the harness, not the operator. The tests run in file order: the last two stop
nodes and compare the host with its state before.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from nodekit import NodeRun

from fixtures.cluster import wait_for
from overshoot_localstack import binaries
from overshoot_localstack import cluster as localcluster
from overshoot_localstack import node as localnode
from overshoot_operator.manifests import PUBLISHER_GID, PUBLISHER_UID, TMP_DIR
from overshoot_publisher.config import PUBLISH_SECRET_DIR

pytestmark = pytest.mark.integration

SETTLE_SECONDS = 5.0


def restricted_pod(
    name: str, image: str, command: list[str], secret: str, placement: dict[str, Any]
) -> dict[str, Any]:
    """The shape of manifests.build_publisher_pod (security contexts, Secret volume, emptyDir
    /tmp), with the probe's command, no health probes, and restartPolicy Never so that the
    Pod can report Succeeded."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "publisher",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "volumeMounts": [
                        {"name": "publish", "mountPath": PUBLISH_SECRET_DIR, "readOnly": True},
                        {"name": "tmp", "mountPath": TMP_DIR},
                    ],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "runAsNonRoot": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "terminationMessagePath": "/dev/termination-log",
                }
            ],
            "volumes": [
                {"name": "publish", "secret": {"secretName": secret, "defaultMode": 0o440}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            ],
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 15,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": PUBLISHER_UID,
                "runAsGroup": PUBLISHER_GID,
                "fsGroup": PUBLISHER_GID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            **placement,
        },
    }


def create_secret(core: client.CoreV1Api, namespace: str, name: str, token: str) -> None:
    core.create_namespaced_secret(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "stringData": {"url": "ws://10.217.0.1:7880", "token": token, "streamId": "s-1"},
        },
    )


def restricted_namespace(core: client.CoreV1Api, namespace: str) -> None:
    """Pod Security "restricted", enforced by the API server: the Pod must pass it."""
    core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )


def wait_phase(
    core: client.CoreV1Api, namespace: str, name: str, phases: set[str], timeout: float
) -> client.V1Pod:
    def reached() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        phase = pod.status.phase if pod.status else None
        if phase == "Failed" and "Failed" not in phases:
            pytest.fail(f"Pod {namespace}/{name} failed: {pod.status}")
        return pod if phase in phases else None

    return wait_for(reached, timeout, what=f"Pod {namespace}/{name} in {sorted(phases)}")


def kubectl_logs(cluster: localcluster.ControlPlane, namespace: str, name: str) -> str:
    kubectl = binaries.ensure(["kubectl"])["kubectl"]
    proc = subprocess.run(
        [str(kubectl), "--kubeconfig", str(cluster.kubeconfig), "logs", "-n", namespace, name],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_node_registers_and_goes_ready(real_node: NodeRun, kube_api: client.ApiClient) -> None:
    node = real_node.node
    obj = client.CoreV1Api(kube_api).read_node(node.name)
    conditions = {c.type: c.status for c in obj.status.conditions}
    assert conditions["Ready"] == "True"
    assert obj.metadata.labels[localnode.NODE_LABEL[0]] == localnode.NODE_LABEL[1]
    assert [(t.key, t.value, t.effect) for t in obj.spec.taints or []] == [
        tuple(localnode.NODE_TAINT.values())
    ]
    addresses = {a.type: a.address for a in obj.status.addresses}
    assert addresses["InternalIP"] == node.node_ip
    info = obj.status.node_info
    assert info.kubelet_version == binaries.KUBERNETES_VERSION
    assert info.container_runtime_version.startswith("containerd://1.6")
    assert obj.status.daemon_endpoints.kubelet_endpoint.port == node.kubelet_port
    print(f"{node.name} Ready in {node.started_seconds:.1f} s at {node.node_ip}")


def test_node_listens_on_its_own_address_only(real_node: NodeRun) -> None:
    node = real_node.node
    pids = {pid for name, pid in node.pids().items() if name in ("kubelet", "containerd")}
    out = subprocess.run(["ss", "-Hltunp"], capture_output=True, text=True, check=True).stdout
    listening = [
        line.split()[4] for line in out.splitlines() if any(f"pid={pid}," in line for pid in pids)
    ]
    assert listening, out
    for address in listening:
        assert address.rsplit(":", 1)[0] == node.node_ip, listening


def test_the_pod_bridge_keeps_its_address_when_a_pod_goes(real_node: NodeRun) -> None:
    """A Linux bridge without an address of its own takes its lowest port's and changes it
    when that port goes; the other Pods' ARP caches then point at a MAC nobody answers
    for until they are probed again (~20 s without reaching the node: seen as a publisher
    that could not reach LiveKit right after another test's Pod was deleted). A veth with
    a lower MAC than any Pod's joins the bridge and leaves it, as a Pod's would."""
    node = real_node.node
    address = Path(f"/sys/class/net/{node.bridge}/address")
    assert address.read_text().strip() == node.bridge_mac
    port, peer = f"ovkt{node.index}", f"ovku{node.index}"
    subprocess.run(
        [
            "ip",
            "link",
            "add",
            port,
            "address",
            "02:00:00:00:00:01",
            "type",
            "veth",
            "peer",
            "name",
            peer,
        ],
        check=True,
    )
    try:
        subprocess.run(["ip", "link", "set", port, "master", node.bridge], check=True)
        assert address.read_text().strip() == node.bridge_mac
    finally:
        subprocess.run(["ip", "link", "del", port], check=True)
    assert address.read_text().strip() == node.bridge_mac


def test_pods_without_the_toleration_stay_on_kwok(
    real_node: NodeRun, kube_api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    for i in range(4):
        core.create_namespaced_pod(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"plain-{i}"},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/plain:1"}]},
            },
        )
    for i in range(4):
        pod = wait_for(
            lambda i=i: (
                (p := core.read_namespaced_pod(f"plain-{i}", namespace)).spec.node_name and p
            ),
            30,
            what=f"plain-{i} scheduled",
        )
        assert pod.spec.node_name.startswith("kwok-node-"), pod.spec.node_name


def test_restricted_pod_runs_an_imported_image_to_success(
    real_node: NodeRun,
    cluster: localcluster.ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
) -> None:
    core = client.CoreV1Api(kube_api)
    restricted_namespace(core, namespace)
    token = f"token-{uuid.uuid4().hex[:8]}"
    create_secret(core, namespace, "lobby-publish", token)
    command = ["/probe", "check", PUBLISH_SECRET_DIR]
    pod = restricted_pod(
        "lobby-publisher", real_node.image, command, "lobby-publish", real_node.node.scheduling()
    )
    core.create_namespaced_pod(namespace, pod)

    done = wait_phase(core, namespace, "lobby-publisher", {"Succeeded"}, timeout=120)
    assert done.spec.node_name == real_node.node.name
    assert done.status.host_ip == real_node.node.node_ip

    # Through the API server, which reaches the kubelet at the Node's InternalIP.
    logs = kubectl_logs(cluster, namespace, "lobby-publisher")
    print(logs)
    lines = set(logs.splitlines())
    uid, gid = PUBLISHER_UID, PUBLISHER_GID
    assert f"uid={uid} gid={gid} euid={uid} egid={gid}" in lines
    assert "rootfs=read-only" in lines
    assert "tmp=writable" in lines
    assert "CapEff=0000000000000000" in lines
    assert "CapBnd=0000000000000000" in lines
    assert "NoNewPrivs=1" in lines
    assert "Seccomp=2" in lines  # filter mode: RuntimeDefault
    # defaultMode 0440, group from fsGroup: readable by the publisher's group only.
    assert f"secret token mode=440 uid=0 gid={gid} content={token}" in lines
    assert "result=ok" in lines


def test_secret_update_reaches_the_mounted_volume(
    real_node: NodeRun,
    cluster: localcluster.ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
    measured: dict[str, str],
) -> None:
    """The kubelet swaps a rotated token into a running Pod's Secret volume (how the
    publisher gets a new token without a restart); the delay is the kubelet's resync."""
    core = client.CoreV1Api(kube_api)
    first, rotated = f"first-{uuid.uuid4().hex[:8]}", f"rotated-{uuid.uuid4().hex[:8]}"
    create_secret(core, namespace, "lobby-publish", first)
    token_file = f"{PUBLISH_SECRET_DIR}/token"
    pod = restricted_pod(
        "lobby-publisher",
        real_node.image,
        ["/probe", "watch", token_file, rotated],
        "lobby-publish",
        real_node.node.scheduling(),
    )
    core.create_namespaced_pod(namespace, pod)
    running = wait_phase(core, namespace, "lobby-publisher", {"Running"}, timeout=120)
    pid = real_node.node.container_pid(running.status.container_statuses[0].container_id)
    # The file as the container sees it, through its root in its own mount namespace.
    seen = Path(f"/proc/{pid}/root{token_file}")
    assert seen.read_text() == first
    # Past the syncs that follow a container's start (one of those would pick the update up
    # at once): what a token rotation long after the start meets.
    time.sleep(SETTLE_SECONDS)

    updated = time.time()
    core.patch_namespaced_secret("lobby-publish", namespace, {"stringData": {"token": rotated}})
    # The probe exits once it has read the new token (its clock is the host's).
    wait_phase(core, namespace, "lobby-publisher", {"Succeeded"}, timeout=180)
    logs = kubectl_logs(cluster, namespace, "lobby-publisher")
    print(logs)
    match = re.search(rf"^content={rotated} at=([0-9.]+)$", logs, re.MULTILINE)
    assert match, logs
    delay = float(match.group(1)) - updated
    assert delay >= 0
    measured[
        f"Secret update -> mounted file ({SETTLE_SECONDS:.0f} s after the start; kubelet "
        "defaults: Watch, syncFrequency 1m)"
    ] = f"{delay:.1f} s"
    print(f"Secret update reached the volume after {delay:.1f} s")


def test_a_pod_annotation_makes_the_kubelet_swap_the_secret_now(
    real_node: NodeRun,
    cluster: localcluster.ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
    measured: dict[str, str],
) -> None:
    """What the operator does when a recreated stream changes the Secret: it changes the
    Pod's `overshoot.ai/publish-stream` annotation, a Pod update, on which the kubelet syncs
    the Pod and remounts its Secret volume from its (watched) Secret at once."""
    core = client.CoreV1Api(kube_api)
    first, rotated = f"first-{uuid.uuid4().hex[:8]}", f"rotated-{uuid.uuid4().hex[:8]}"
    create_secret(core, namespace, "lobby-publish", first)
    token_file = f"{PUBLISH_SECRET_DIR}/token"
    pod = restricted_pod(
        "lobby-publisher",
        real_node.image,
        ["/probe", "watch", token_file, rotated],
        "lobby-publish",
        real_node.node.scheduling(),
    )
    core.create_namespaced_pod(namespace, pod)
    wait_phase(core, namespace, "lobby-publisher", {"Running"}, timeout=120)
    time.sleep(SETTLE_SECONDS)  # as above: past the syncs that follow the start

    updated = time.time()
    core.patch_namespaced_secret("lobby-publish", namespace, {"stringData": {"token": rotated}})
    core.patch_namespaced_pod(
        "lobby-publisher",
        namespace,
        {"metadata": {"annotations": {"overshoot.ai/publish-stream": "s-2"}}},
    )
    wait_phase(core, namespace, "lobby-publisher", {"Succeeded"}, timeout=60)
    logs = kubectl_logs(cluster, namespace, "lobby-publisher")
    match = re.search(rf"^content={rotated} at=([0-9.]+)$", logs, re.MULTILINE)
    assert match, logs
    delay = float(match.group(1)) - updated
    assert delay >= 0
    measured["Secret update + Pod annotation -> mounted file"] = f"{delay:.1f} s"
    print(f"Secret update with a Pod annotation reached the volume after {delay:.1f} s")


def test_host_is_left_as_found(real_node: NodeRun, kube_api: client.ApiClient) -> None:
    node = real_node.node
    name = node.name
    node.stop()
    after = localnode.HostState.capture()
    ours, theirs = localnode.split_foreign(after.diff(real_node.before))
    if theirs:
        print("Changed meanwhile by other harnesses on this host (not compared):")
        print(localnode.format_diff(theirs))
    assert not ours, "The node left this behind:\n" + localnode.format_diff(ours)
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(kube_api).read_node(name)
    assert err.value.status == 404


_OWNER_SCRIPT = """
import json, signal, sys
from pathlib import Path
from overshoot_localstack.node import RealNode

args = json.loads(sys.argv[1])
node = RealNode(server=args["server"], ca_cert=Path(args["ca_cert"]), ca_key=Path(args["ca_key"]))
node.start()
images = node.import_image(Path(args["archive"]))
print(json.dumps({"name": node.name, "workdir": str(node.workdir), "images": images}), flush=True)
signal.pause()  # until the test SIGKILLs this process
"""


def test_leftovers_of_a_sigkilled_owner_are_removed(
    cluster: localcluster.ControlPlane,
    kube_api: client.ApiClient,
    namespace: str,
    probe_archive: Path,
    probe_image: str,
    tmp_path: Path,
) -> None:
    """A test process killed outright cannot clean up: its kubelet, containerd and mount
    namespace holder die with it (parent-death signal), but containerd's shims and the
    containers outlive it by design. `cleanup_orphans()` (which every start runs) removes
    what is left, until the host is as it was."""
    localnode.ensure_packages()
    localnode.cleanup_orphans()
    before = localnode.HostState.capture()
    assert cluster.pki is not None
    args = {
        "server": cluster.server,
        "ca_cert": str(cluster.pki.ca_cert),
        "ca_key": str(cluster.pki.ca_key),
        "archive": str(probe_archive),
    }
    log = tmp_path / "owner.log"
    with log.open("wb") as err:
        owner = subprocess.Popen(
            [sys.executable, "-c", _OWNER_SCRIPT, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        assert line, f"the owner process failed:\n{log.read_text()[-3000:]}"
        started = json.loads(line)
        assert probe_image in started["images"]
        name, workdir = started["name"], started["workdir"]

        core = client.CoreV1Api(kube_api)
        create_secret(core, namespace, "lobby-publish", "t")
        placement = {
            "nodeSelector": {"kubernetes.io/hostname": name},
            "tolerations": localnode.RealNode.scheduling()["tolerations"],
        }
        pod = restricted_pod(
            "sleeper", probe_image, ["/probe", "sleep"], "lobby-publish", placement
        )
        core.create_namespaced_pod(namespace, pod)
        wait_phase(core, namespace, "sleeper", {"Running"}, timeout=120)
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()

    def survivors() -> frozenset[str]:
        return localnode.HostState.capture().aspects["processes"]

    # The kubelet and containerd die with their owner; shims and containers do not.
    wait_for(
        lambda: not any(" kubelet " in p or " containerd " in p for p in survivors()),
        10,
        what="kubelet and containerd to die with their owner",
    )
    left = localnode.HostState.capture().diff(before)
    print("Left behind by the SIGKILLed owner:\n" + localnode.format_diff(left))
    assert any("containerd-shim" in p for p in left.get("processes", {}).get("added", []))

    cleaned = localnode.cleanup_orphans()
    assert workdir in cleaned
    ours, theirs = localnode.split_foreign(localnode.HostState.capture().diff(before))
    if theirs:
        print("Changed meanwhile by other harnesses on this host (not compared):")
        print(localnode.format_diff(theirs))
    assert not ours, "Left behind after cleanup:\n" + localnode.format_diff(ours)
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(kube_api).read_node(name)
    assert err.value.status == 404
