"""IEEE 488.2 / SCPI wire formats shared by the VNA driver and the VNA simulator.

One module for both directions, so the simulator cannot drift from what the driver parses. Parsers
never trust their input: every length and digit is checked, and failures are `ValueError`s with a
message that the caller wraps with the instrument and command.
"""

from __future__ import annotations

import re

import numpy as np
from vrclip.edge.radar.dialects import ByteOrder, DataFormat

#: Largest definite-length block the driver accepts. 100 001 complex points in REAL,64 are 1.6 MB; the
#: bound keeps a corrupt header from making the driver try to read gigabytes.
MAX_BLOCK_BYTES = 64 * 1024 * 1024

_ERROR_RE = re.compile(r'^\s*([+-]?\d+)\s*,\s*"(.*)"\s*$')

#: Standard SCPI error texts (SCPI-99 vol. 2, chapter 21) used by the simulator.
SCPI_ERRORS: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -114: "Header suffix out of range",
    -200: "Execution error",
    -213: "Init ignored",
    -221: "Settings conflict",
    -222: "Data out of range",
    -223: "Too much data",
    -224: "Illegal parameter value",
    -350: "Queue overflow",
}


def value_dtype(data_format: DataFormat, byte_order: ByteOrder) -> np.dtype:
    """numpy dtype of one value of a REAL block: NORM is big-endian (IEEE 488.2), SWAP little-endian."""
    if data_format == "ascii":
        raise ValueError("ASCII data has no binary dtype")
    size = 4 if data_format == "real32" else 8
    endian = ">" if byte_order == "norm" else "<"
    return np.dtype(f"{endian}f{size}")


def encode_block(payload: bytes) -> bytes:
    """`#<n><length><payload>`: a definite-length arbitrary block (IEEE 488.2 8.7.9)."""
    length = str(len(payload))
    if len(length) > 9:
        raise ValueError(f"block of {len(payload)} bytes is too long for a definite-length header")
    return b"#" + str(len(length)).encode() + length.encode() + payload


def parse_block_prefix(first_two: bytes) -> int:
    """Check `#<n>` and return n, the number of length digits that follow (1..9)."""
    if len(first_two) < 2 or first_two[:1] != b"#":
        raise ValueError(f"expected a definite-length block starting with '#', got {first_two[:16]!r}")
    digit = first_two[1:2]
    if digit == b"0":
        raise ValueError(
            "got an indefinite-length block (#0); set a REAL format so the instrument sends lengths"
        )
    if not digit.isdigit():
        raise ValueError(f"block header digit count is {digit!r}, not a digit 1-9")
    return int(digit)


def parse_block_length(digits: bytes, n_digits: int) -> int:
    """Validate the length field of a block header and return the payload length in bytes."""
    if len(digits) != n_digits or not digits.isdigit():
        raise ValueError(f"block header length field {digits!r} is not {n_digits} decimal digits")
    length = int(digits)
    if length > MAX_BLOCK_BYTES:
        raise ValueError(f"block header announces {length} bytes, more than the {MAX_BLOCK_BYTES} accepted")
    return length


def decode_real(payload: bytes, data_format: DataFormat, byte_order: ByteOrder) -> np.ndarray:
    """REAL,32/64 block payload -> float64 values."""
    dtype = value_dtype(data_format, byte_order)
    if len(payload) % dtype.itemsize:
        raise ValueError(
            f"block of {len(payload)} bytes is not a whole number of {dtype.itemsize}-byte values"
        )
    return np.frombuffer(payload, dtype=dtype).astype(np.float64)


def encode_real(values: np.ndarray, data_format: DataFormat, byte_order: ByteOrder) -> bytes:
    return np.ascontiguousarray(values, dtype=value_dtype(data_format, byte_order)).tobytes()


def parse_ascii(text: str) -> np.ndarray:
    """Comma-separated numbers (`FORM ASC`) -> float64 values; NaN/inf are parsed and left to the caller."""
    body = text.strip()
    if not body:
        return np.zeros(0, dtype=np.float64)
    fields = body.split(",")
    try:
        return np.array([float(f) for f in fields], dtype=np.float64)
    except ValueError:
        bad = next(f for f in fields if not _is_float(f))
        raise ValueError(f"ASCII data holds {bad.strip()[:32]!r}, which is not a number") from None


def encode_ascii(values: np.ndarray) -> bytes:
    """Nine significant digits: enough for float32 values to survive the round trip exactly."""
    return ",".join(f"{v:.8E}" for v in np.asarray(values, dtype=np.float64).tolist()).encode("ascii")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_error(text: str) -> tuple[int, str]:
    """`-113,"Undefined header"` -> (-113, 'Undefined header'). Raises ValueError if not of that form."""
    match = _ERROR_RE.match(text)
    if match is None:
        raise ValueError(f'SYST:ERR? reply {text[:80]!r} is not of the form <code>,"<text>"')
    return int(match.group(1)), match.group(2)


def format_error(code: int, detail: str | None = None) -> str:
    """The SCPI error-queue entry for `code`, with an optional instrument-specific detail after ';'."""
    text = SCPI_ERRORS.get(code, "Error")
    if detail:
        text = f"{text};{detail}"
    return f'{code},"{text}"'
