"""Fixtures for tests/node: a real kubelet + containerd node (`overshoot_localstack.node`)
beside the session control plane's kwok Nodes, and a test image to run on it.

- `probe_archive` (session): an OCI archive of a one-file image, a static binary compiled
  from probe.c (see its header for what it does), until the project's own image is used.
- `real_node` (module): a started `RealNode` with the probe image imported, and the host
  state recorded just before it started (`before`), for the test that stops it and
  compares. Its start time and the measured Secret refresh delay are printed in pytest's
  terminal summary.
- `pod_stack` (module): that node with the project's image (`make image`) imported,
  LiveKit on the node's address and the emulator with its media gateway: where publisher
  Pods run for real.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from nodekit import MEASURED, PROBE_IMAGE, NodeRun, PodStack

from overshoot_localstack import binaries, image, netns
from overshoot_localstack import cluster as localcluster
from overshoot_localstack import node as localnode
from overshoot_localstack.emulator import EmulatorProcess
from overshoot_localstack.livekit import LiveKitServer
from overshoot_localstack.rtsp import free_port

PROBE_SOURCE = Path(__file__).with_name("probe.c")


@pytest.fixture(scope="session")
def measured() -> dict[str, str]:
    """Figures to print in the terminal summary: `measured["what"] = "1.2 s"`."""
    return MEASURED


@pytest.fixture(scope="session")
def probe_image() -> str:
    return PROBE_IMAGE


@pytest.fixture(scope="session")
def probe_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("probe-image")
    binary = localnode.build_static(PROBE_SOURCE, directory / "probe")
    return localnode.write_oci_archive(
        directory / "probe.oci.tar",
        reference=PROBE_IMAGE,
        files={"probe": (binary.read_bytes(), 0o755)},
        entrypoint=["/probe"],
        user="65532:65532",
    )


@pytest.fixture(scope="module")
def real_node(cluster: localcluster.ControlPlane, probe_archive: Path) -> Iterator[NodeRun]:
    localnode.ensure_packages()  # before the snapshot: installing is not the node's doing
    localnode.cleanup_orphans()
    before = localnode.HostState.capture()
    node = localnode.RealNode.for_control_plane(cluster)
    node.start()
    try:
        MEASURED["real node start (packages and kubelet already there)"] = (
            f"{node.started_seconds:.1f} s"
        )
        images = node.import_image(probe_archive)
        assert PROBE_IMAGE in images, images
        yield NodeRun(node, before, PROBE_IMAGE)
    finally:
        node.stop()


@pytest.fixture(scope="module")
def pod_stack(real_node: NodeRun, measured: dict[str, str]) -> Iterator[PodStack]:
    started = time.monotonic()
    ref = image.ensure_image()
    measured["project image (make image, as found in the cache)"] = (
        f"{time.monotonic() - started:.1f} s"
    )
    started = time.monotonic()
    names = real_node.node.import_image(ref.archive)
    measured["image import into the node's containerd"] = f"{time.monotonic() - started:.1f} s"
    assert image.IMAGE in names, names
    address = real_node.node.node_ip
    livekit = LiveKitServer(
        netns.HostAddress(address),
        port=free_port(address),
        rtc_tcp_port=free_port(address),
        rtc_udp_port=free_port(address),
        binary=binaries.ensure(["livekit-server"])["livekit-server"],
    )
    with (
        livekit,
        EmulatorProcess(
            expire_interval=0.5,
            livekit_url=livekit.url,
            livekit_api_key=livekit.api_key,
            livekit_api_secret=livekit.api_secret,
        ) as emulator,
        httpx.Client(timeout=10, trust_env=False) as http,
    ):
        yield PodStack(real_node, image.IMAGE, livekit, emulator, http)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.section("real node: measured")
        for what, value in MEASURED.items():
            terminalreporter.write_line(f"{what}: {value}")
