"""A small SCPI command parser for the simulated instrument.

It implements the parts of SCPI-99 that real VNAs enforce and that a driver can get wrong: short and
long mnemonic forms ("SENS" / "SENSE"), case insensitivity, numeric suffixes ("CALC1"), optional nodes
("INIT1[:IMMediate]"), compound messages with `;`, and the header path rule (after "SENS1:FREQ:STAR 1"
a following "STOP 2" means "SENS1:FREQ:STOP 2"; a leading ':' resets to the root; common `*` commands
leave the path alone). Being as strict as an instrument is the point: a driver that passes here sends
commands an instrument accepts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_NODE_RE = re.compile(r"^(\[)?:?([A-Z*]+)([a-z]*)(#)?(\])?$")
_TOKEN_RE = re.compile(r"^([A-Za-z*]+?)(\d*)$")


class ScpiError(Exception):
    """A command the instrument rejects; `code` is the SCPI error number for the error queue."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class _Node:
    short: str
    long: str
    suffix: bool
    optional: bool

    def accepts(self, name: str) -> bool:
        upper = name.upper()
        return upper in (self.short, self.long)


@dataclass(frozen=True)
class Call:
    """One parsed program message unit, as a handler sees it."""

    #: The header as sent (for error details).
    header: str
    query: bool
    #: Numeric suffix of every suffixed node of the pattern, in order (1 where omitted).
    suffixes: tuple[int, ...]
    params: tuple[str, ...]


Handler = Callable[[Call], Any]


def compile_pattern(spec: str) -> tuple[_Node, ...]:
    """'SOURce#:POWer[:LEVel]' -> nodes. Upper-case letters are the short form, '#' a numeric suffix."""
    parts = re.findall(r"\[:[^\]]+\]|:?[^:\[]+", spec)
    nodes = []
    for part in parts:
        match = _NODE_RE.match(part)
        if match is None:
            raise ValueError(f"bad SCPI pattern node {part!r} in {spec!r}")
        opt_open, upper, lower, suffix, opt_close = match.groups()
        if bool(opt_open) != bool(opt_close):
            raise ValueError(f"unbalanced brackets in {part!r} of {spec!r}")
        nodes.append(_Node(upper, (upper + lower).upper(), bool(suffix), bool(opt_open)))
    return tuple(nodes)


def split_outside_quotes(text: str, separator: str) -> list[str]:
    """Split on `separator` except inside '...' or "..." strings."""
    out, current, quote = [], [], ""
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch == separator:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quote:
        raise ScpiError(-102, "unterminated string")
    out.append("".join(current))
    return out


def unquote(param: str) -> str:
    p = param.strip()
    if len(p) >= 2 and p[0] == p[-1] and p[0] in "'\"":
        return p[1:-1]
    return p


class CommandTable:
    """Patterns -> handlers, with SCPI header matching and the path rule."""

    #: Parsed messages kept for reuse. A driver repeats the same few messages for every channel, and
    #: header matching costs ~80 µs per message, which would otherwise show up as acquisition overhead.
    CACHE_SIZE = 256

    def __init__(self) -> None:
        self._entries: list[tuple[tuple[_Node, ...], bool, Handler]] = []
        self._cache: dict[str, tuple[list[tuple[Handler, Call]], ScpiError | None]] = {}

    def add(self, spec: str, handler: Handler, *, query: bool) -> None:
        """Register `spec` as a command (query=False) or a query (query=True)."""
        self._entries.append((compile_pattern(spec), query, handler))

    def parse_message(self, message: str) -> tuple[list[tuple[Handler, Call]], ScpiError | None]:
        """Split one program message into units, resolve each header, and match it.

        Returns the units up to the first one that does not parse, and that unit's error (or None):
        an instrument executes the good units before a bad one and ignores the rest of the message.
        """
        cached = self._cache.get(message)
        if cached is not None:
            return cached
        result = self._parse(message)
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[message] = result
        return result

    def _parse(self, message: str) -> tuple[list[tuple[Handler, Call]], ScpiError | None]:
        resolved: list[tuple[Handler, Call]] = []
        path: tuple[str, ...] = ()
        try:
            units = split_outside_quotes(message, ";")
        except ScpiError as exc:
            return resolved, exc
        for unit in units:
            unit = unit.strip()
            if not unit:
                continue
            header, _, rest = unit.partition(" ")
            query = header.endswith("?")
            bare = header[:-1] if query else header
            if bare.startswith("*"):
                tokens: tuple[str, ...] = (bare,)
                common = True
            else:
                common = False
                if bare.startswith(":"):
                    rel: tuple[str, ...] = ()
                    bare = bare[1:]
                else:
                    rel = path
                tokens = rel + tuple(bare.split(":"))
            try:
                handler, suffixes = self._match(tokens, query, header)
                params = tuple(p.strip() for p in split_outside_quotes(rest, ",")) if rest.strip() else ()
            except ScpiError as exc:
                return resolved, exc
            resolved.append((handler, Call(header, query, suffixes, params)))
            if not common:
                path = tokens[:-1]
        return resolved, None

    def _match(self, tokens: tuple[str, ...], query: bool, header: str) -> tuple[Handler, tuple[int, ...]]:
        parsed = []
        for token in tokens:
            match = _TOKEN_RE.match(token)
            if match is None:
                raise ScpiError(-113, header)
            parsed.append((match.group(1), match.group(2)))
        suffix_problem = False
        for nodes, is_query, handler in self._entries:
            if is_query != query:
                continue
            result = _match_nodes(nodes, parsed)
            if result is None:
                continue
            if result == "suffix":
                suffix_problem = True
                continue
            return handler, result
        raise ScpiError(-114 if suffix_problem else -113, header)


def _match_nodes(nodes: tuple[_Node, ...], tokens: list[tuple[str, str]]) -> tuple[int, ...] | str | None:
    """Match tokens against nodes (optional nodes may be skipped). Returns suffixes, 'suffix' or None."""

    def walk(i: int, j: int, acc: tuple[int, ...]) -> tuple[int, ...] | str | None:
        if j == len(tokens):
            return acc if all(n.optional for n in nodes[i:]) else None
        if i == len(nodes):
            return None
        node = nodes[i]
        name, digits = tokens[j]
        found: tuple[int, ...] | str | None = None
        if node.accepts(name):
            if digits and not node.suffix:
                found = "suffix"
            else:
                extra = (int(digits) if digits else 1,) if node.suffix else ()
                found = walk(i + 1, j + 1, acc + extra)
        if isinstance(found, tuple):
            return found
        if node.optional:
            skipped = walk(i + 1, j, acc)
            if isinstance(skipped, tuple):
                return skipped
            return skipped or found
        return found

    return walk(0, 0, ())
