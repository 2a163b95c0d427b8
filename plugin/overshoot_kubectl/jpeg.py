"""One RGB picture to a JPEG file's bytes, with PyAV's `mjpeg` encoder.

Role: the snapshot's encoding step: no image library beyond what the `preview` extra
already brings (PyAV, numpy). Full-range 4:2:0 (`yuvj420p`, what JPEG files use) at a
fixed high quality: a look at a camera, not an archive.

Boundary: PyAV and numpy; no I/O (the caller writes the bytes).
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt

__all__ = ["QUALITY", "RgbImage", "encode_jpeg"]

# Height x width x 3 (R, G, B), 8 bits each.
RgbImage = npt.NDArray[np.uint8]

# The encoder's quantizer range (FFmpeg's -q:v: 2 is near-lossless, 31 the worst). Fixed,
# because its default bit-rate control would size a single frame for a 200 kbit/s stream.
QUALITY = (2, 4)


def encode_jpeg(rgb: RgbImage) -> bytes:
    """The JPEG of an (height, width, 3) RGB array. Odd sizes are fine (4:2:0 rounds up)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (height, width, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuvj420p"
    codec.time_base = Fraction(1, 1)
    codec.qmin, codec.qmax = QUALITY
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    packets = [*codec.encode(frame.reformat(format="yuvj420p")), *codec.encode(None)]
    return b"".join(bytes(packet) for packet in packets)
