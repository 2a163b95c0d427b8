"""Shared pieces of tests/node (imported by conftest.py and the tests): the test image's
name and what the `real_node` and `pod_stack` fixtures yield."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx

from overshoot_localstack import node as localnode
from overshoot_localstack.emulator import EmulatorProcess
from overshoot_localstack.livekit import LiveKitServer

PROBE_IMAGE = "overshoot.local/node-probe:1"

# Figures measured by the tests, printed in pytest's terminal summary.
MEASURED: dict[str, str] = {}


@dataclasses.dataclass
class NodeRun:
    """A started real node, the image imported into it, and the host before it started."""

    node: localnode.RealNode
    before: localnode.HostState
    image: str


@dataclasses.dataclass
class PodStack:
    """The real node with the project's image imported, and the media side for its Pods:
    LiveKit on the node's address (what the Pod network reaches) and the emulator as
    Overshoot, its media gateway counting the frames that really arrive."""

    run: NodeRun
    image: str
    livekit: LiveKitServer
    emulator: EmulatorProcess
    http: httpx.Client

    @property
    def node_ip(self) -> str:
        return self.run.node.node_ip

    @property
    def api_url(self) -> str:
        """The emulator under /v1beta (viewer tokens, camera sources)."""
        return self.emulator.url + "/v1beta"

    def gateway(self, stream_id: str) -> dict[str, Any]:
        """What the media gateway decoded of a stream (frames, size, rate)."""
        response = self.http.get(self.emulator.url + "/_emulator/gateway")
        response.raise_for_status()
        stats: dict[str, Any] = response.json().get(stream_id, {})
        return stats

    def frames(self, stream_id: str) -> int:
        return int(self.gateway(stream_id).get("frames", 0))
