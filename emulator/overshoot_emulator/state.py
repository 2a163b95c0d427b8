"""What the request handlers share: one `Emulator` object stored on the aiohttp app.

Also the JSON answer helpers, so every error the emulator sends has the contract's shape
`{"detail": ...}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from overshoot_emulator.config import EmulatorConfig
from overshoot_emulator.faults import CallCounter, FaultQueue
from overshoot_emulator.store import StreamStore
from overshoot_emulator.tokens import TokenMinter


@dataclass(slots=True)
class Emulator:
    config: EmulatorConfig
    store: StreamStore
    minter: TokenMinter
    faults: FaultQueue = field(default_factory=FaultQueue)
    calls: CallCounter = field(default_factory=CallCounter)

    def reset(self) -> None:
        self.store.reset()
        self.faults.clear()
        self.calls.reset()


EMULATOR = web.AppKey("emulator", Emulator)


class Abort(Exception):
    """Stop handling a request and send `response` (faults, auth and lookup failures)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


def detail(status: int, text: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"detail": text}, status=status, headers=headers)


def format_seconds(seconds: float) -> str:
    """Seconds for a Retry-After header: an integer when whole, as HTTP expects."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
