"""What the request handlers share: one `Emulator` object stored on the aiohttp app.

Also the JSON answer helpers, so every error the emulator sends has the contract's shape
`{"detail": ...}` (the region errors excepted: their `region_error` shape is regions.py's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from overshoot_emulator.config import EmulatorConfig
from overshoot_emulator.faults import CallCounter, FaultQueue
from overshoot_emulator.pull import PullManager
from overshoot_emulator.regions import Regions
from overshoot_emulator.store import StreamStore
from overshoot_emulator.tokens import TokenMinter


@dataclass(slots=True)
class Emulator:
    config: EmulatorConfig
    store: StreamStore
    minter: TokenMinter
    pulls: PullManager
    regions: Regions
    faults: FaultQueue = field(default_factory=FaultQueue)
    calls: CallCounter = field(default_factory=CallCounter)

    def reset(self) -> None:
        # Ending every stream also stops its pull (the pull manager observes the store).
        self.store.reset()
        self.faults.clear()
        self.calls.reset()
        self.regions.reset()


EMULATOR = web.AppKey("emulator", Emulator)


class Abort(Exception):
    """Stop handling a request and send `response` (faults, auth and lookup failures)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


def detail(status: int, text: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"detail": text}, status=status, headers=headers)
