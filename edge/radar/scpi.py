"""IEEE 488.2 / SCPI wire formats shared by the VNA driver and the VNA simulator.

One module for both directions, so the simulator cannot drift from what the driver parses. Parsers
never trust their input: every length and digit is checked, and failures are `ValueError`s with a
message that the caller wraps with the instrument and command.
"""

from __future__ import annotations

import math
import re
from typing import NoReturn

import numpy as np
from vrclip.edge.radar.dialects import ByteOrder, DataFormat

#: Largest definite-length block the driver accepts. 100 001 complex points in REAL,64 are 1.6 MB; the
#: bound keeps a corrupt header from making the driver try to read gigabytes.
MAX_BLOCK_BYTES = 64 * 1024 * 1024

#: SCPI error codes lie in -32768..32767; a longer digit run is garbage, not a code to convert.
_ERROR_RE = re.compile(r'^\s*([+-]?\d{1,9})\s*,\s*"(.*)"\s*$', re.ASCII)

#: IEEE 488.2 <NR1>/<NR2>/<NR3> numeric response data: "21", "-0.5", "+1.000000000000E+09". Python's
#: float() accepts far more ("1_000", "infinity", "nan", Unicode digits, padding with any whitespace),
#: and each of those from an instrument means a broken or hostile reply.
_DECIMAL = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DECIMAL_RE = re.compile(_DECIMAL, re.ASCII)

#: The non-finite mnemonics an instrument (and the simulator, via Python's "E" format) may put in an
#: ASCII trace, spelt exactly as sent. Accepted only where the caller asks, so that the trace check
#: can report them as data faults (overload, no calibration) rather than as garbled replies.
_NON_FINITE = {"NAN": math.nan, "INF": math.inf, "+INF": math.inf, "-INF": -math.inf}

#: A whole ASCII trace in one match (C speed; a per-value check costs 5x the float conversion).
_ASCII_FIELD = rf"[ \t]*{_DECIMAL}[ \t]*|NAN|[+-]?INF"
_ASCII_TRACE_RE = re.compile(rf"(?:{_ASCII_FIELD})(?:,(?:{_ASCII_FIELD}))*", re.ASCII)

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


def parse_number(text: str, *, allow_non_finite: bool = False) -> float:
    """One SCPI decimal number (NR1, NR2 or NR3, spaces around it allowed) -> float.

    Raises ValueError naming the text for anything else, and for a number too large for a float
    ("1E999"). With allow_non_finite, the mnemonics NAN, INF, -INF (exactly so: upper case, no padding)
    give NaN and infinities.
    """
    field = text.strip(" \t")
    if _DECIMAL_RE.fullmatch(field):
        value = float(field)
        if math.isinf(value):
            raise ValueError(f"{text[:32]!r} is beyond the range of a 64-bit float")
        return value
    if allow_non_finite and text in _NON_FINITE:
        return _NON_FINITE[text]
    raise ValueError(f"{text[:32]!r} is not an SCPI decimal number (NR1/NR2/NR3, e.g. -1.5E-03)")


def parse_ascii(text: str) -> np.ndarray:
    """Comma-separated numbers (`FORM ASC`) -> float64 values; NaN/inf are parsed and left to the caller."""
    body = text.strip(" \t")
    if not body:
        return np.zeros(0, dtype=np.float64)
    fields = body.split(",")
    if _ASCII_TRACE_RE.fullmatch(body) is None:
        _raise_first_bad(fields)
    # Every field is now a decimal number or a mnemonic, both of which float() reads as SCPI means.
    values = np.array(fields, dtype=np.float64)
    overflowed = [i for i in np.flatnonzero(np.isinf(values)).tolist() if fields[i] not in _NON_FINITE]
    if overflowed:  # "1E999": a decimal number too large for a float, not an INF the instrument meant
        _raise_first_bad([fields[i] for i in overflowed], overflowed)
    return values


def _raise_first_bad(fields: list[str], indices: list[int] | None = None) -> NoReturn:
    """Raise the ValueError of the first field parse_number refuses, naming its position."""
    for i, field in zip(indices or range(len(fields)), fields, strict=True):
        try:
            parse_number(field, allow_non_finite=True)
        except ValueError as exc:
            raise ValueError(f"ASCII data value {i}: {exc}") from None
    raise ValueError("ASCII data is not a comma-separated list of SCPI decimal numbers")


def encode_ascii(values: np.ndarray) -> bytes:
    """Nine significant digits: enough for float32 values to survive the round trip exactly."""
    return ",".join(f"{v:.8E}" for v in np.asarray(values, dtype=np.float64).tolist()).encode("ascii")


#: Response message terminators accepted after a reply: NL (IEEE 488.2 8.5) and the CR NL that some
#: instruments send on raw sockets. Every read path of the driver accepts exactly these two.
TERMINATORS = (b"\r\n", b"\n")

#: `*OPC?` answers 1 when the operation is complete; "+1" is the same NR1 with its optional sign.
OPC_COMPLETE = ("1", "+1")


def strip_terminator(raw: bytes) -> bytes:
    """`raw` without its "\n" or "\r\n" terminator; ValueError naming the ending when it has neither."""
    for end in TERMINATORS:
        if raw.endswith(end):
            return raw[: -len(end)]
    raise ValueError(f"reply {raw[-40:]!r} does not end with '\\n' or '\\r\\n'")


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
