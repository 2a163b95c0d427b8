"""Fixtures for tests/node: a real kubelet + containerd node (`overshoot_localstack.node`)
beside the session control plane's kwok Nodes, and a test image to run on it.

- `probe_archive` (session): an OCI archive of a one-file image, a static binary compiled
  from probe.c (see its header for what it does), until the project's own image is used.
- `real_node` (module): a started `RealNode` with the probe image imported, and the host
  state recorded just before it started (`before`), for the test that stops it and
  compares. Its start time and the measured Secret refresh delay are printed in pytest's
  terminal summary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nodekit import MEASURED, PROBE_IMAGE, NodeRun

from overshoot_localstack import cluster as localcluster
from overshoot_localstack import node as localnode

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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.section("real node: measured")
        for what, value in MEASURED.items():
            terminalreporter.write_line(f"{what}: {value}")
