"""`kubectl overshoot get`: OvershootStreams as a table, the way kubectl prints one.

Role: pure functions from observed streams and `now` to rows, and from rows to text.
Columns: NAMESPACE (with -A), NAME, PHASE, DELIVERY, FPS, LAST FRAME, REGION, REASON.
A field the status lacks prints `-`; REASON is the Ready condition's reason while Ready is
not True, and empty otherwise. Ages are kubectl's (`HumanDuration`: 3s, 5m30s, 5m, 2h).

Boundary: no I/O, no clock reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from overshoot_kubectl.streams import ObservedStream

__all__ = ["HEADERS", "format_fps", "human_duration", "render", "rows"]

HEADERS = ("NAME", "PHASE", "DELIVERY", "FPS", "LAST FRAME", "REGION", "REASON")
ABSENT = "-"
# kubectl's printer: columns left-aligned, three spaces apart.
PADDING = 3


def human_duration(seconds: float) -> str:
    """kubectl's `duration.HumanDuration` (k8s.io/apimachinery/pkg/util/duration)."""
    whole = int(seconds)
    # Up to 2 s in the future is clock skew between machines: "now".
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 3 * 60:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rest = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{hours // 24 // 365}y"


def format_fps(fps: float | None) -> str:
    if fps is None:
        return ABSENT
    return f"{fps:.0f}" if float(fps).is_integer() else f"{fps:.1f}"


def _age(when: datetime | None, now: datetime) -> str:
    if when is None:
        return ABSENT
    if when.tzinfo is None:  # RFC 3339 without an offset: the API server's UTC
        when = when.replace(tzinfo=UTC)
    return human_duration((now - when).total_seconds())


def _row(stream: ObservedStream, now: datetime) -> tuple[str, ...]:
    return (
        stream.name,
        stream.phase or ABSENT,
        stream.delivery or ABSENT,
        format_fps(stream.media.recent_fps),
        _age(stream.last_media_at, now),
        stream.region or ABSENT,
        stream.not_ready_reason,
    )


def rows(
    streams: Iterable[ObservedStream], *, now: datetime, all_namespaces: bool
) -> list[tuple[str, ...]]:
    """The table's rows, header first, sorted by namespace and name like kubectl's."""
    ordered = sorted(streams, key=lambda s: (s.namespace, s.name))
    header = ("NAMESPACE", *HEADERS) if all_namespaces else HEADERS
    body = [((s.namespace, *_row(s, now)) if all_namespaces else _row(s, now)) for s in ordered]
    return [header, *body]


def render(table: Sequence[Sequence[str]]) -> str:
    """Rows as aligned text, one line each, no trailing spaces."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "".join(
            cell.ljust(width + PADDING) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in table
    ]
    return "\n".join(lines) + "\n"
