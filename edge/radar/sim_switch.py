"""A simulated switch-matrix controller speaking docs/switch_protocol.md on a TCP socket.

It drives the shared `SimulatedFrontEnd`, so a `SEL` here changes which path the simulated VNA
measures. Input is never trusted: lines are bounded (ERR 103 and the rest of the line discarded),
every argument is range-checked, and a client that floods it only gets error replies.
"""

from __future__ import annotations

import asyncio

from vrclip.edge.radar.frontend import SimulatedFrontEnd
from vrclip.edge.radar.line_server import LineServer
from vrclip.edge.radar.linereader import BoundedLineReader, LineTooLong
from vrclip.edge.radar.switch_protocol import (
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    ErrCode,
    ProtocolViolation,
    format_error,
    parse_index,
    parse_sequence,
)

#: Concurrent client connections; more are closed at once (a controller has one host).
MAX_CLIENTS = 4


class SimulatedSwitch:
    """Controller state and command handling, independent of the transport."""

    def __init__(self, front_end: SimulatedFrontEnd, *, settle_s: float = 0.0) -> None:
        self.front_end = front_end
        #: Time the relays need after a change; `OK` is sent only after it (as the protocol requires).
        self.settle_s = settle_s
        self.sequence: list[tuple[int, int]] = []
        self.position = 0
        #: Number of SEL/NEXT switch operations performed (for tests and the bench).
        self.operations = 0
        #: Hardware stepping (ARM): advance on each pulse at the trigger input, count the steps.
        self.armed = False
        self.steps = 0
        front_end.trigger_listeners.append(self.on_trigger_input)

    def on_trigger_input(self) -> None:
        """A pulse on the STEP IN connector: when armed, select the next pair of the sequence.

        Solid-state switches settle in microseconds, well inside the VNA's re-arm time, so the
        step is immediate. A relay fault stops the stepping (the count then shows missed steps).
        """
        if not self.armed or not self.sequence or self.front_end.self_test_fault is not None:
            return
        self.position = (self.position + 1) % len(self.sequence)
        self.front_end.select(*self.sequence[self.position])
        self.operations += 1
        self.steps += 1

    async def handle(self, line: str) -> str:
        """One request line (no terminator) -> one reply line (no terminator)."""
        try:
            return await self._dispatch(line)
        except ProtocolViolation as exc:
            return format_error(exc.code, exc.text)

    async def _dispatch(self, line: str) -> str:
        fe = self.front_end
        command, _, args = line.partition(" ")
        if command == "VER?" and not args:
            return f"VER {PROTOCOL_VERSION}"
        if command == "SIZE?" and not args:
            return f"SIZE {fe.n_tx} {fe.n_rx}"
        if command == "SEL?" and not args:
            return "SEL NONE" if fe.selected is None else f"SEL {fe.selected[0]} {fe.selected[1]}"
        if command == "SEL":
            self._refuse_if_armed(command)
            parts = args.split(" ")
            if len(parts) != 2:
                raise ProtocolViolation(ErrCode.BAD_ARGUMENT, "usage: SEL <tx> <rx>")
            tx = parse_index(parts[0], fe.n_tx, "tx")
            rx = parse_index(parts[1], fe.n_rx, "rx")
            await self._switch(tx, rx)
            return "OK"
        if command == "SEQ":
            count, _, body = args.partition(" ")
            self.sequence = parse_sequence(count, body, fe.n_tx, fe.n_rx)
            self.position = 0
            self.armed = False
            return "OK"
        if command == "NEXT" and not args:
            self._refuse_if_armed(command)
            if not self.sequence:
                raise ProtocolViolation(ErrCode.NO_SEQUENCE, "no sequence loaded; send SEQ first")
            tx, rx = self.sequence[self.position]
            await self._switch(tx, rx)  # a fault raises before the position moves
            self.position = (self.position + 1) % len(self.sequence)
            return f"OK {tx} {rx}"
        if command == "ARM" and not args:
            if not self.sequence:
                raise ProtocolViolation(ErrCode.NO_SEQUENCE, "no sequence loaded; send SEQ first")
            tx, rx = self.sequence[0]
            await self._switch(tx, rx)
            self.position, self.steps, self.armed = 0, 0, True
            return f"OK {tx} {rx}"
        if command == "DISARM" and not args:
            self.armed = False
            return "OK"
        if command == "POS?" and not args:
            if not self.armed:
                raise ProtocolViolation(ErrCode.ARM_STATE, "not armed; send ARM first")
            return f"POS {self.position} {self.steps}"
        if command == "TEST?" and not args:
            fault = fe.self_test_fault
            return "TEST PASS" if fault is None else f"TEST FAIL {' '.join(fault.split())}"
        if command in ("VER?", "SIZE?", "SEL?", "NEXT", "TEST?", "ARM", "DISARM", "POS?"):
            raise ProtocolViolation(ErrCode.BAD_ARGUMENT, f"{command} takes no arguments")
        raise ProtocolViolation(ErrCode.UNKNOWN_COMMAND, f"unknown command {command[:32]!r}")

    def _refuse_if_armed(self, command: str) -> None:
        if self.armed:
            raise ProtocolViolation(
                ErrCode.ARM_STATE, f"{command} while armed for hardware stepping; send DISARM (or SEQ) first"
            )

    async def _switch(self, tx: int, rx: int) -> None:
        fault = self.front_end.self_test_fault
        if fault is not None:
            raise ProtocolViolation(ErrCode.HARDWARE_FAULT, f"relay driver fault: {fault}")
        self.front_end.select(tx, rx)
        self.operations += 1
        if self.settle_s > 0:
            await asyncio.sleep(self.settle_s)


class SwitchServer(LineServer):
    """Serves one SimulatedSwitch over TCP, one reply line per request line."""

    label = "simulated switch controller"

    def __init__(self, switch: SimulatedSwitch, *, max_clients: int = MAX_CLIENTS) -> None:
        super().__init__(max_clients=max_clients)
        self.switch = switch

    async def _serve_lines(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines = BoundedLineReader(reader, MAX_LINE_BYTES - 1)
        while True:
            line = await lines.readline()
            if line is None:
                break
            if isinstance(line, LineTooLong):
                reply = format_error(
                    ErrCode.LINE_TOO_LONG, f"line of {line.size} bytes; limit {MAX_LINE_BYTES}"
                )
            else:
                try:
                    text = line.rstrip(b"\r").decode("ascii")
                except UnicodeDecodeError:
                    reply = format_error(ErrCode.BAD_ARGUMENT, "non-ASCII bytes in request")
                else:
                    reply = await self.switch.handle(text)
            writer.write(reply.encode("ascii") + b"\n")
            await writer.drain()
