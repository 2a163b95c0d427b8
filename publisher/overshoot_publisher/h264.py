"""H.264 bitstream helpers for the passthrough path: pure functions over bytes.

WebRTC (and LiveKit's pre-encoded source) wants each access unit in Annex B form
(start-code delimited NAL units), with SPS/PPS in band before every IDR so a subscriber
that joins late can start decoding. MP4/MOV files carry AVCC instead (length-prefixed NAL
units, parameter sets only in the `avcC` extradata); RTSP and MPEG-TS are already Annex B
but some cameras send SPS/PPS only in the SDP. These helpers convert and patch without
decoding a single picture.

Boundary: bytes in, bytes out. No PyAV, no LiveKit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

START_CODE = b"\x00\x00\x00\x01"

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9


class BitstreamError(ValueError):
    """The bytes are not the H.264 layout they were declared to be."""


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B buffer, without their start codes."""
    units: list[bytes] = []
    n = len(data)
    i = _find_start(data, 0)
    if i < 0:
        return [data] if data else []
    while i < n:
        # Skip the start code (3 or 4 bytes: the leading zero is part of the previous gap).
        j = i + 3
        nxt = _find_start(data, j)
        end = n if nxt < 0 else nxt
        unit = data[j:end]
        # A 4-byte start code leaves one trailing zero on the previous unit.
        while unit.endswith(b"\x00") and nxt >= 0:
            unit = unit[:-1]
        if unit:
            units.append(unit)
        if nxt < 0:
            break
        i = nxt
    return units


def _find_start(data: bytes, offset: int) -> int:
    """Index of the next 3-byte start code 00 00 01 at or after offset, or -1."""
    return data.find(b"\x00\x00\x01", offset)


def nal_type(unit: bytes) -> int:
    return unit[0] & 0x1F if unit else -1


def nal_types(annexb: bytes) -> list[int]:
    return [nal_type(u) for u in split_annexb(annexb)]


def join_annexb(units: list[bytes]) -> bytes:
    return b"".join(START_CODE + u for u in units)


def is_idr(annexb: bytes) -> bool:
    return NAL_IDR in nal_types(annexb)


@dataclass(frozen=True)
class AvcConfig:
    """The parts of an `avcC` record (ISO/IEC 14496-15) the converter needs."""

    length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]

    def parameter_sets_annexb(self) -> bytes:
        return join_annexb([*self.sps, *self.pps])


def parse_avcc(extradata: bytes) -> AvcConfig:
    """Parse an `avcC` record; raise BitstreamError if it is not one."""
    if len(extradata) < 7 or extradata[0] != 1:
        raise BitstreamError("extradata is not an avcC record")
    length_size = (extradata[4] & 0x03) + 1
    pos = 5
    count = extradata[pos] & 0x1F
    pos += 1
    sps: list[bytes] = []
    for _ in range(count):
        size = int.from_bytes(extradata[pos : pos + 2], "big")
        pos += 2
        sps.append(extradata[pos : pos + size])
        pos += size
    if pos >= len(extradata):
        raise BitstreamError("avcC record ends before its PPS list")
    count = extradata[pos]
    pos += 1
    pps: list[bytes] = []
    for _ in range(count):
        size = int.from_bytes(extradata[pos : pos + 2], "big")
        pos += 2
        pps.append(extradata[pos : pos + size])
        pos += size
    if pos > len(extradata):
        raise BitstreamError("avcC record is truncated")
    return AvcConfig(length_size, tuple(sps), tuple(pps))


def iter_length_prefixed(data: bytes, length_size: int) -> Iterator[bytes]:
    pos = 0
    n = len(data)
    while pos < n:
        if pos + length_size > n:
            raise BitstreamError("length-prefixed NAL unit header runs past the packet")
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > n:
            raise BitstreamError("length-prefixed NAL unit runs past the packet")
        yield data[pos : pos + size]
        pos += size


class AnnexBConverter:
    """Turns demuxed H.264 packets into Annex B access units WebRTC can carry.

    - AVCC input (extradata is an avcC record): length prefixes become start codes.
    - Annex B input: passed through.
    Either way, an IDR access unit without SPS/PPS gets the last parameter sets seen
    (in band or from the extradata) prepended.
    """

    def __init__(self, extradata: bytes | None) -> None:
        self._avcc: AvcConfig | None = None
        self._sps: list[bytes] = []
        self._pps: list[bytes] = []
        if extradata:
            if extradata[0] == 1:
                self._avcc = parse_avcc(extradata)
                self._sps = list(self._avcc.sps)
                self._pps = list(self._avcc.pps)
            else:
                for unit in split_annexb(extradata):
                    self._remember(unit)

    @property
    def is_avcc(self) -> bool:
        return self._avcc is not None

    def _remember(self, unit: bytes) -> None:
        kind = nal_type(unit)
        if kind == NAL_SPS:
            self._sps = [unit]
        elif kind == NAL_PPS:
            self._pps = [unit]

    def convert(self, packet: bytes) -> tuple[bytes, bool]:
        """One access unit in Annex B and whether it is an IDR (a keyframe)."""
        if self._avcc is not None:
            units = list(iter_length_prefixed(packet, self._avcc.length_size))
        else:
            units = split_annexb(packet)
        kinds = [nal_type(u) for u in units]
        for unit, kind in zip(units, kinds, strict=True):
            if kind in (NAL_SPS, NAL_PPS):
                self._remember(unit)
        idr = NAL_IDR in kinds
        if idr and (NAL_SPS not in kinds or NAL_PPS not in kinds) and self._sps and self._pps:
            # Parameter sets go after an access unit delimiter, before everything else.
            head = 1 if kinds and kinds[0] == NAL_AUD else 0
            extra = [u for u in (*self._sps, *self._pps) if nal_type(u) not in kinds]
            units = units[:head] + extra + units[head:]
        if self._avcc is None and not (idr and len(units) != len(kinds)):
            # Annex B input unchanged: avoid re-joining (a copy) for the common case.
            return packet, idr
        return join_annexb(units), idr
