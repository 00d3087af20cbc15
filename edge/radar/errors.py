"""Errors of the radar acquisition path.

Two kinds, kept apart on purpose:

- `RadarError` (a `SensorError`): the instrument or the link misbehaved (timeout, dropped connection,
  malformed reply, an instrument-side error). The runtime drops the frame, reconnects with backoff and
  keeps going, because such faults usually clear (a rebooted VNA, a re-plugged cable).
- `RadarSetupError` (also a `UserError`): the configuration cannot work with this hardware (wrong
  instrument at the address, a sweep outside the instrument's range, a bad resource string).
  Reconnecting would only repeat the failure forever, so the runtime stops and says what to change.

Every message names the device (address and, once known, identity) and the command that failed,
because on site the only other clue is a blinking LED.
"""

from __future__ import annotations

from vrclip.edge.errors import ConfigError, SensorError


def _compose(device: str, command: str | None, problem: str) -> str:
    where = f"{device}: command {command!r}: " if command else f"{device}: "
    return where + problem


class RadarError(SensorError):
    """A fault of a radar instrument (VNA or switch) or of the link to it; recoverable by reconnecting."""

    def __init__(self, device: str, command: str | None, problem: str) -> None:
        super().__init__(_compose(device, command, problem))
        #: "VNA <resource> (<IDN>)" or "switch <port>": which box to look at.
        self.device = device
        #: The command being executed when it failed (None while connecting).
        self.command = command
        #: What went wrong, without the device/command prefix.
        self.problem = problem


class RadarSetupError(RadarError, ConfigError):
    """The configuration cannot work with the connected hardware; retrying would not help."""


# --- VNA ----------------------------------------------------------------------------------------


class VnaError(RadarError):
    """Any VNA fault."""


class VnaConnectionError(VnaError):
    """The VNA could not be reached, or the connection broke."""


class VnaTimeoutError(VnaError):
    """The VNA did not answer within the timeout."""


class VnaProtocolError(VnaError):
    """A reply did not follow IEEE 488.2/SCPI: bad block header, truncated block, unparsable text."""


class VnaDataError(VnaError):
    """A well-formed reply carried unusable data: wrong number of values, NaN or infinity."""


class VnaInstrumentError(VnaError):
    """The instrument reported errors in its SCPI error queue (`SYST:ERR?`); `errors` holds them verbatim."""

    def __init__(self, device: str, command: str | None, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__(device, command, "instrument reported " + "; ".join(self.errors))


class VnaIdentityError(VnaError, RadarSetupError):
    """`*IDN?` names an instrument the configured dialect does not drive."""


class VnaRangeError(VnaError, RadarSetupError):
    """The configured sweep lies outside what the instrument can do; raised before anything is sent."""


class VnaResourceError(VnaError, RadarSetupError):
    """The VISA resource string or backend is invalid."""


# --- switch matrix ------------------------------------------------------------------------------


class SwitchError(RadarError):
    """Any switch-controller fault."""


class SwitchConnectionError(SwitchError):
    """The controller could not be reached, or the connection broke."""


class SwitchTimeoutError(SwitchError):
    """The controller did not answer within the timeout."""


class SwitchProtocolError(SwitchError):
    """A reply did not follow the switch protocol (see docs/switch_protocol.md)."""


class SwitchReplyError(SwitchError):
    """The controller answered `ERR <code> <text>`."""

    def __init__(self, device: str, command: str | None, code: int, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(device, command, f"controller replied ERR {code} {text}")


class SwitchSelfTestError(SwitchError):
    """`TEST?` answered `TEST FAIL <reason>`: a relay, driver or supply fault on the controller."""


class SwitchSetupError(SwitchError, RadarSetupError):
    """The controller cannot serve the configured array (too few ports, incompatible protocol version)."""
