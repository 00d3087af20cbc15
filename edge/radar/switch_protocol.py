"""The RF switch-matrix controller's line protocol: constants, codes and (de)serialisers.

Shared by the client (`switch.py`) and the simulator (`sim_switch.py`) so both read one definition;
the prose specification is docs/switch_protocol.md. Everything here is pure: parsers raise
`ProtocolViolation` carrying the `ERR` code the controller answers with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import IntEnum

#: Version this code speaks. Clients accept any controller with the same major version.
PROTOCOL_VERSION = "1.3.0"
#: Longest line in bytes, terminator included, in either direction. A 256-entry SEQ line is ~1.6 kB.
MAX_LINE_BYTES = 2048
#: Longest switching sequence a controller must store.
MAX_SEQUENCE = 256
#: Highest Tx or Rx port count the protocol addresses (indices 0..MAX_PORTS-1).
MAX_PORTS = 64

_VERSION_RE = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")
_INDEX_RE = re.compile(r"^\d{1,3}$")


class ErrCode(IntEnum):
    """Codes of `ERR <code> <text>` replies."""

    UNKNOWN_COMMAND = 100
    BAD_ARGUMENT = 101
    OUT_OF_RANGE = 102
    LINE_TOO_LONG = 103
    NO_SEQUENCE = 104
    SEQUENCE_TOO_LONG = 105
    ARM_STATE = 106
    HARDWARE_FAULT = 200


class ProtocolViolation(ValueError):
    """A malformed request (controller side) or reply (client side); `code` is the ERR code to answer."""

    def __init__(self, code: ErrCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def format_error(code: ErrCode | int, text: str) -> str:
    """`ERR <code> <text>` with the text kept to one line."""
    clean = " ".join(text.split())
    return f"ERR {int(code)} {clean}"[: MAX_LINE_BYTES - 1]


def parse_index(text: str, limit: int, what: str) -> int:
    """A decimal port index 0..limit-1."""
    if not _INDEX_RE.match(text):
        raise ProtocolViolation(ErrCode.BAD_ARGUMENT, f"{what} {text!r} is not a decimal index")
    value = int(text)
    if value >= limit:
        raise ProtocolViolation(ErrCode.OUT_OF_RANGE, f"{what} {value} outside 0..{limit - 1}")
    return value


def format_pair(tx: int, rx: int) -> str:
    return f"{tx} {rx}"


def format_sequence(pairs: Iterable[tuple[int, int]]) -> str:
    """The `SEQ` command line (without terminator) for a list of (tx, rx) pairs."""
    items = [(int(t), int(r)) for t, r in pairs]
    if not 1 <= len(items) <= MAX_SEQUENCE:
        raise ProtocolViolation(
            ErrCode.SEQUENCE_TOO_LONG, f"sequence of {len(items)} pairs; must be 1..{MAX_SEQUENCE}"
        )
    for t, r in items:
        if not (0 <= t < MAX_PORTS and 0 <= r < MAX_PORTS):
            raise ProtocolViolation(ErrCode.OUT_OF_RANGE, f"pair ({t}, {r}) outside 0..{MAX_PORTS - 1}")
    return f"SEQ {len(items)} " + ";".join(f"{t},{r}" for t, r in items)


def parse_sequence(count_text: str, body: str, n_tx: int, n_rx: int) -> list[tuple[int, int]]:
    """Arguments of a `SEQ <n> <tx,rx;...>` command -> pairs, validated against the matrix size."""
    if not _INDEX_RE.match(count_text):
        raise ProtocolViolation(ErrCode.BAD_ARGUMENT, f"SEQ count {count_text!r} is not a decimal number")
    count = int(count_text)
    if not 1 <= count <= MAX_SEQUENCE:
        raise ProtocolViolation(ErrCode.SEQUENCE_TOO_LONG, f"SEQ count {count}; must be 1..{MAX_SEQUENCE}")
    entries = body.split(";")
    if len(entries) != count:
        raise ProtocolViolation(
            ErrCode.BAD_ARGUMENT, f"SEQ announced {count} pairs but carries {len(entries)}"
        )
    pairs = []
    for i, entry in enumerate(entries):
        parts = entry.split(",")
        if len(parts) != 2:
            raise ProtocolViolation(ErrCode.BAD_ARGUMENT, f"SEQ entry {i} {entry!r} is not <tx>,<rx>")
        pairs.append(
            (parse_index(parts[0], n_tx, f"entry {i} tx"), parse_index(parts[1], n_rx, f"entry {i} rx"))
        )
    return pairs


def parse_version(text: str) -> tuple[int, int, int]:
    match = _VERSION_RE.match(text)
    if match is None:
        raise ProtocolViolation(ErrCode.BAD_ARGUMENT, f"version {text!r} is not <major>.<minor>.<patch>")
    return int(match.group(1)), int(match.group(2)), int(match.group(3))
