"""End to end: a camera the emulator pulls is republished into its stream's LiveKit room.

A real LiveKit server in a network namespace (WebRTC ignores loopback), the emulator with
LiveKit settings pulling a GStreamer RTSP camera on loopback, and this test joining the
room with a viewer token: it must see one video track, from `overshoot-source`, at the
camera's size, while the stream's frame fields count every frame once (the media gateway
stays out of pulled streams' rooms).

Needs the livekit-server binary (`make binaries`); like the other e2e tests it fails, with
the command to run, when the binary is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from overshoot_localstack import binaries, netns
from overshoot_localstack.emulator import EmulatorProcess
from overshoot_localstack.livekit import LiveKitServer
from overshoot_localstack.rtsp import RtspServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

AUTH = {"Authorization": "Bearer ovs-republish"}
FPS = 15


@pytest.fixture
def livekit_emulator() -> Iterator[EmulatorProcess]:
    binary = binaries.find("livekit-server")
    if binary is None:
        pytest.fail(
            "livekit-server is not built: run `make binaries` (or "
            "`.venv/bin/overshoot-localstack build livekit`) first",
            pytrace=False,
        )
    try:
        ns = netns.create()
    except netns.NetnsError as exc:
        pytest.fail(f"Could not create a network namespace: {exc}", pytrace=False)
    try:
        livekit = LiveKitServer(ns, binary=binary)
        with (
            livekit,
            EmulatorProcess(
                livekit_url=livekit.url,
                livekit_api_key=livekit.api_key,
                livekit_api_secret=livekit.api_secret,
                allow_private_sources=True,
            ) as emulator,
        ):
            yield emulator
    finally:
        ns.remove()


async def test_a_pulled_camera_is_republished_and_counted_once(
    livekit_emulator: EmulatorProcess, rtsp_camera: Callable[..., RtspServer]
) -> None:
    from livekit import rtc

    camera = rtsp_camera(fps=FPS, username="cam", password="republish-Pa55")
    url = f"rtsp://cam:republish-Pa55@127.0.0.1:{camera.port}{camera.path}"
    async with httpx.AsyncClient(base_url=livekit_emulator.url, timeout=30) as http:
        created = await http.post(
            "/v1beta/streams", json={"source": {"type": "rtsp", "url": url}}, headers=AUTH
        )
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        view = (await http.post(f"/v1beta/streams/{stream_id}/viewer-token", headers=AUTH)).json()[
            "view"
        ]

        room = rtc.Room()
        publishers: list[str] = []
        sizes: set[tuple[int, int]] = set()
        seen = 0
        enough = asyncio.Event()
        readers: list[asyncio.Task[None]] = []

        async def read(track: Any) -> None:
            nonlocal seen
            async for event in rtc.VideoStream(track):
                sizes.add((event.frame.width, event.frame.height))
                seen += 1
                if seen >= 3 * FPS:
                    enough.set()

        def on_track(track: Any, _publication: Any, participant: Any) -> None:
            if track.kind == rtc.TrackKind.KIND_VIDEO:
                publishers.append(participant.identity)
                readers.append(asyncio.create_task(read(track)))

        room.on("track_subscribed", on_track)
        await room.connect(view["url"], view["token"])
        try:
            await asyncio.wait_for(enough.wait(), timeout=60)
            assert publishers == ["overshoot-source"]
            assert sizes == {(camera.width, camera.height)}

            # Counted once: the frame index moves at the camera's rate, not twice it.
            before = (await http.get(f"/v1beta/streams/{stream_id}", headers=AUTH)).json()
            await asyncio.sleep(5)  # a measurement window, not a wait for a condition
            after = (await http.get(f"/v1beta/streams/{stream_id}", headers=AUTH)).json()
            rate = (after["last_frame_index"] - before["last_frame_index"]) / (
                (after["last_frame_at_ms"] - before["last_frame_at_ms"]) / 1000
            )
            assert FPS * 0.8 <= rate <= FPS * 1.2, rate
            gateway = (await http.get("/_emulator/gateway")).json()
            assert stream_id not in gateway
        finally:
            for task in readers:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await room.disconnect()

        # DELETE also takes the republished track out of the room.
        assert (await http.delete(f"/v1beta/streams/{stream_id}", headers=AUTH)).status_code == 200
