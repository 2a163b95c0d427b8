"""Shared pieces of tests/node (imported by conftest.py and the tests): the test image's
name and what the `real_node` fixture yields."""

from __future__ import annotations

import dataclasses

from overshoot_localstack import node as localnode

PROBE_IMAGE = "overshoot.local/node-probe:1"

# Figures measured by the tests, printed in pytest's terminal summary.
MEASURED: dict[str, str] = {}


@dataclasses.dataclass
class NodeRun:
    """A started real node, the image imported into it, and the host before it started."""

    node: localnode.RealNode
    before: localnode.HostState
    image: str
