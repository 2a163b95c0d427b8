"""Annex B / AVCC conversion and parameter-set patching, on hand-made bitstreams."""

from __future__ import annotations

import pytest

from overshoot_publisher.h264 import (
    AnnexBConverter,
    BitstreamError,
    join_annexb,
    nal_types,
    parse_avcc,
    split_annexb,
)

pytestmark = pytest.mark.unit

SPS = bytes([0x67, 0x42, 0xC0, 0x1E, 0xAA])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
IDR = bytes([0x65, 0x88, 0x84, 0x00, 0x10])
SLICE = bytes([0x41, 0x9A, 0x02])
AUD = bytes([0x09, 0xF0])


def avcc_record(length_size: int = 4) -> bytes:
    return (
        bytes([1, 0x42, 0xC0, 0x1E, 0xFC | (length_size - 1), 0xE1])
        + len(SPS).to_bytes(2, "big")
        + SPS
        + bytes([1])
        + len(PPS).to_bytes(2, "big")
        + PPS
    )


def length_prefixed(*units: bytes, size: int = 4) -> bytes:
    return b"".join(len(u).to_bytes(size, "big") + u for u in units)


def test_split_handles_three_and_four_byte_start_codes() -> None:
    data = b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x01" + PPS + b"\x00\x00\x00\x01" + IDR
    assert split_annexb(data) == [SPS, PPS, IDR]


def test_join_then_split_round_trips() -> None:
    assert split_annexb(join_annexb([AUD, SPS, PPS, IDR])) == [AUD, SPS, PPS, IDR]


def test_parse_avcc() -> None:
    config = parse_avcc(avcc_record())
    assert config.length_size == 4
    assert config.sps == (SPS,)
    assert config.pps == (PPS,)


def test_parse_avcc_rejects_annexb_extradata() -> None:
    with pytest.raises(BitstreamError):
        parse_avcc(join_annexb([SPS, PPS]))


@pytest.mark.parametrize("length_size", [1, 2, 4])
def test_avcc_packets_become_annexb_with_parameter_sets_before_idr(length_size: int) -> None:
    converter = AnnexBConverter(avcc_record(length_size))
    data, key = converter.convert(length_prefixed(IDR, size=length_size))
    assert key
    assert split_annexb(data) == [SPS, PPS, IDR]
    data, key = converter.convert(length_prefixed(SLICE, size=length_size))
    assert not key
    assert split_annexb(data) == [SLICE]


def test_annexb_idr_without_parameter_sets_gets_them_from_extradata_after_the_aud() -> None:
    converter = AnnexBConverter(join_annexb([SPS, PPS]))
    data, key = converter.convert(join_annexb([AUD, IDR]))
    assert key
    assert nal_types(data) == [9, 7, 8, 5]


def test_annexb_with_inband_parameter_sets_passes_through_unchanged() -> None:
    converter = AnnexBConverter(None)
    packet = join_annexb([AUD, SPS, PPS, IDR])
    data, key = converter.convert(packet)
    assert key
    assert data is packet


def test_parameter_sets_seen_in_band_are_reused_for_later_idrs() -> None:
    converter = AnnexBConverter(None)
    converter.convert(join_annexb([SPS, PPS, IDR]))
    data, _ = converter.convert(join_annexb([IDR]))
    assert nal_types(data) == [7, 8, 5]


def test_truncated_avcc_packet_is_an_error() -> None:
    converter = AnnexBConverter(avcc_record())
    with pytest.raises(BitstreamError):
        converter.convert(b"\x00\x00\x00\x09" + SLICE)
