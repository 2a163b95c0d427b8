"""Regions: which region serves a request, and the `region_error` answers of a wrong one.

Overshoot's streams are regional (v1beta docs): a client may name a region in the
`X-Overshoot-Region` request header, a stream lives in the region that created it, a request
that reaches the wrong region gets 409 `region_error`, and every answer names its serving
region in the same header. The emulator serves every region from one process; a request
without the header goes to the current default region, which tests move at run time to
emulate geo-routing sending a client elsewhere.

Pure state and functions; the HTTP layer (api.py) reads the header and sends the answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

DEFAULT_REGION = "us-central1"
HEADER = "X-Overshoot-Region"

# Guess: region names look like GCP's (`us-central1`); anything of this alphabet is accepted.
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def parse_regions(text: str) -> tuple[str, ...]:
    """`us-central1,us-west1` -> the regions in order (the first is the default)."""
    names = tuple(part.strip() for part in text.split(","))
    if not names or not all(names):
        raise ValueError(f"expected a comma-separated list of region names, got {text!r}")
    for name in names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid region name {name!r} (lowercase letters, digits, '-')")
    if len(set(names)) != len(names):
        raise ValueError(f"region names repeat in {text!r}")
    return names


class Regions:
    """The known regions and the current default one (mutable through the admin surface)."""

    def __init__(self, names: Sequence[str] = (DEFAULT_REGION,)) -> None:
        if not names:
            raise ValueError("at least one region is needed")
        self.names = tuple(names)
        self._known = frozenset(self.names)
        self.default = self.names[0]

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def serving(self, requested: str | None) -> str:
        """The region that serves a request whose header names `requested` (or nothing).

        An unknown name is served (with a 409) by the default region.
        """
        if requested and requested in self._known:
            return requested
        return self.default

    def unknown(self, requested: str | None) -> bool:
        """Whether the request names a region that does not exist."""
        return bool(requested) and requested not in self._known

    def set_default(self, name: str) -> None:
        if name not in self._known:
            raise ValueError(f"unknown region {name!r}; known: {', '.join(self.names)}")
        self.default = name

    def reset(self) -> None:
        self.default = self.names[0]


# Guess: the body of a 409 is undocumented beyond "a region_error body naming the expected or
# requested region"; these two shapes are ours.
def unknown_region_body(requested: str) -> dict[str, Any]:
    return {
        "error": "region_error",
        "message": f"Unknown region {requested!r}",
        "requested_region": requested,
    }


def wrong_region_body(stream_id: str, expected: str, serving: str) -> dict[str, Any]:
    return {
        "error": "region_error",
        "message": f"Stream {stream_id} is served by region {expected}",
        "expected_region": expected,
        "requested_region": serving,
    }
