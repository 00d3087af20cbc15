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


def decode_rgb(data: np.ndarray, height: int, width: int, what: str) -> np.ndarray:
    """JPEG bytes -> (height, width, 3) uint8 RGB; RecordingError naming `what` if they do not decode
    to an image of that size."""
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
