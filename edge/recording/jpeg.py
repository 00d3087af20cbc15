"""RGB frames <-> JPEG bytes with OpenCV.

Frames are RGB in memory (as every source produces them); OpenCV encodes and decodes BGR, so the
conversion happens here and nowhere else. JPEG keeps a 1280x720 session at tens of KB per frame instead
of 2.7 MB raw, which is what makes hours of camera recording fit on an edge box.
"""

from __future__ import annotations

import cv2
import numpy as np
from vrclip.edge.errors import RecordingError


def encode_rgb(rgb: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> 1-D uint8 array holding a JPEG file."""
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:  # pragma: no cover - OpenCV only fails here on impossible inputs already refused upstream
        raise RuntimeError(f"OpenCV could not JPEG-encode a {rgb.shape} {rgb.dtype} image")
    return np.asarray(buf, dtype=np.uint8).reshape(-1)


#: Start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15): the segments that carry the image size.
_SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, read without decoding; None when the bytes have no
    frame header before the image data (not a JPEG, or damaged)."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a segment
            i += 2
        elif marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header came first
            return None
        elif marker in _SOF_MARKERS:
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def decode_rgb(data: np.ndarray, height: int, width: int, what: str) -> np.ndarray:
    """JPEG bytes -> (height, width, 3) uint8 RGB; RecordingError naming `what` if they do not decode
    to an image of that size. The size in the JPEG's header is checked before decoding: a damaged
    header claiming 30000 x 30000 would otherwise cost gigabytes of memory to find out."""
    size = jpeg_frame_size(np.ascontiguousarray(data, dtype=np.uint8).tobytes())
    if size is not None and size != (height, width):
        raise RecordingError(
            f"{what}: the JPEG's header says {size[0]} x {size[1]}, the recording says {height} x {width}; "
            "the file is damaged"
        )
    try:
        bgr = cv2.imdecode(np.ascontiguousarray(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        bgr = None
        detail = f" ({str(e).strip().splitlines()[-1]})"
    else:
        detail = ""
    if bgr is None:
        raise RecordingError(f"{what}: the JPEG does not decode{detail}; the file is damaged")
    if bgr.shape != (height, width, 3):
        raise RecordingError(
            f"{what}: the JPEG decodes to {bgr.shape}, the recording says ({height}, {width}, 3); "
            "the file is damaged"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
