"""SCPI dialects of the VNAs the edge box can drive, as data.

Why a table and not subclasses: the two families differ only in a handful of command spellings and
limits. Keeping them as data lets the driver, the simulator and the docs read the same source, and a
new instrument family is a new table entry, not new control flow.

Limits are those of each model's base configuration; an instrument with a frequency-extension option
needs its entry widened. The driver checks the sweep against them before sending anything, because an
out-of-range `SENS:FREQ` on a real VNA is silently clamped by some firmware versions and only shows up
later as a wrong range axis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from vrclip.edge.config import SweepConfig
from vrclip.edge.errors import ConfigError

DataFormat = Literal["real32", "real64", "ascii"]
ByteOrder = Literal["norm", "swap"]

DATA_FORMATS: tuple[DataFormat, ...] = ("real32", "real64", "ascii")
BYTE_ORDERS: tuple[ByteOrder, ...] = ("norm", "swap")


@dataclass(frozen=True)
class ModelLimits:
    """What one instrument model can sweep."""

    #: Regular expression matched (fully, case-sensitively) against the IDN model field.
    model_pattern: str
    min_hz: float
    max_hz: float
    max_points: int

    def matches(self, model: str) -> bool:
        return re.fullmatch(self.model_pattern, model) is not None


@dataclass(frozen=True)
class Dialect:
    """Command spellings and identity of one VNA family."""

    name: str
    description: str
    #: Regular expression matched (fully) against the IDN manufacturer field.
    vendor_pattern: str
    models: tuple[ModelLimits, ...]
    #: Sent in order after `*CLS` on every (re)connect; `{start}` etc. are filled by `setup_commands`.
    setup: tuple[str, ...]
    #: Starts one sweep and asks for completion; the reply ("1") comes when the sweep has finished.
    trigger: str
    #: Returns the selected trace's complex data (re, im interleaved) in the active format.
    data_query: str
    format_commands: dict[str, str] = field(default_factory=dict)
    byte_order_commands: dict[str, str] = field(default_factory=dict)
    #: The byte order this family uses after a preset; the driver still sets it explicitly.
    default_byte_order: ByteOrder = "norm"
    #: Turn on the rear-panel trigger output as one pulse after each sweep (hardware switch stepping:
    #: the cable to the switch controller's step input replaces one network round trip per channel).
    trigger_output_on: tuple[str, ...] = ()
    points_query: str = "SENS1:SWE:POIN?"
    start_query: str = "SENS1:FREQ:STAR?"
    stop_query: str = "SENS1:FREQ:STOP?"
    error_query: str = "SYST:ERR?"

    @property
    def min_hz(self) -> float:
        """Lowest frequency any model of the family sweeps (checked before connecting)."""
        return min(m.min_hz for m in self.models)

    @property
    def max_hz(self) -> float:
        return max(m.max_hz for m in self.models)

    @property
    def max_points(self) -> int:
        return max(m.max_points for m in self.models)

    def model_limits(self, manufacturer: str, model: str) -> ModelLimits | None:
        """The limits of the instrument named by an IDN, or None if this dialect does not drive it."""
        if re.fullmatch(self.vendor_pattern, manufacturer) is None:
            return None
        return next((m for m in self.models if m.matches(model)), None)

    def expected_identity(self) -> str:
        """Human-readable list of what the dialect accepts, for error messages."""
        models = ", ".join(m.model_pattern for m in self.models)
        return f"manufacturer matching {self.vendor_pattern!r} and model matching one of: {models}"

    def setup_commands(self, sweep: SweepConfig, data_format: DataFormat, byte_order: ByteOrder) -> list[str]:
        """Every configuration command, in the order the driver sends them."""
        values = {
            "start": scpi_number(sweep.start_hz),
            "stop": scpi_number(sweep.stop_hz),
            "points": str(int(sweep.points)),
            "ifbw": scpi_number(sweep.if_bandwidth_hz),
            "power": scpi_number(sweep.power_dbm),
        }
        commands = [template.format(**values) for template in self.setup]
        commands.append(self.format_commands[data_format])
        commands.append(self.byte_order_commands[byte_order])
        return commands


def scpi_number(value: float) -> str:
    """Shortest exact-enough decimal for a SCPI numeric parameter ("800000000", "0.5", "-10")."""
    text = f"{float(value):.12g}"
    return "0" if text == "-0" else text


KEYSIGHT = Dialect(
    name="keysight",
    description="Keysight/Agilent PNA-family SCPI (PNA, PNA-L, PNA-X, ENA E5080)",
    vendor_pattern=r"(Keysight|Agilent) Technologies",
    models=(
        ModelLimits(r"E5080[AB]", 9e3, 9e9, 100_003),
        ModelLimits(r"N5221[AB]", 10e6, 13.5e9, 100_003),
        ModelLimits(r"N5222[AB]", 10e6, 26.5e9, 100_003),
        ModelLimits(r"N5224[AB]", 10e6, 43.5e9, 100_003),
        ModelLimits(r"N5227[AB]", 10e6, 67e9, 100_003),
        ModelLimits(r"N523[1-5][AB]", 300e3, 13.5e9, 32_001),
    ),
    setup=(
        # Hold first, so nothing sweeps with half-applied settings.
        "SENS1:SWE:MODE HOLD",
        "CALC1:PAR:DEL:ALL",
        "CALC1:PAR:DEF:EXT 'vrclip_s21','S21'",
        "CALC1:PAR:SEL 'vrclip_s21'",
        "SENS1:FREQ:STAR {start}",
        "SENS1:FREQ:STOP {stop}",
        "SENS1:SWE:POIN {points}",
        "SENS1:BWID {ifbw}",
        "SOUR1:POW {power}",
    ),
    trigger="SENS1:SWE:MODE SING;*OPC?",
    data_query="CALC1:DATA? SDATA",
    # PNA auxiliary trigger output 1: a positive pulse after every sweep.
    trigger_output_on=(
        "TRIG:CHAN1:AUX1:INT SWE",
        "TRIG:CHAN1:AUX1:POS AFT",
        "TRIG:CHAN1:AUX1:OPOL POS",
        "TRIG:CHAN1:AUX1 ON",
    ),
    format_commands={
        "real32": "FORM:DATA REAL,32",
        "real64": "FORM:DATA REAL,64",
        "ascii": "FORM:DATA ASC,0",
    },
    byte_order_commands={"norm": "FORM:BORD NORM", "swap": "FORM:BORD SWAP"},
    default_byte_order="norm",
)

ROHDE_SCHWARZ = Dialect(
    name="rs",
    description="Rohde & Schwarz ZNB/ZNA-family SCPI",
    vendor_pattern=r"Rohde-Schwarz|Rohde&Schwarz",
    models=(
        ModelLimits(r"ZNB4(-\dPort)?", 9e3, 4.5e9, 100_001),
        ModelLimits(r"ZNB8(-\dPort)?", 9e3, 8.5e9, 100_001),
        ModelLimits(r"ZNB20(-\dPort)?", 100e3, 20e9, 100_001),
        ModelLimits(r"ZNB40(-\dPort)?", 10e6, 40e9, 100_001),
        ModelLimits(r"ZNA26(-\dPort)?", 10e6, 26.5e9, 100_001),
    ),
    setup=(
        # Single-sweep mode first, so nothing sweeps with half-applied settings.
        "INIT1:CONT OFF",
        "CALC1:PAR:DEL:ALL",
        "CALC1:PAR:SDEF 'Trc1','S21'",
        "CALC1:PAR:SEL 'Trc1'",
        "SENS1:FREQ:STAR {start}",
        "SENS1:FREQ:STOP {stop}",
        "SENS1:SWE:POIN {points}",
        "SENS1:BAND {ifbw}",
        "SOUR1:POW {power}",
    ),
    trigger="INIT1:IMM;*OPC?",
    data_query="CALC1:DATA? SDAT",
    # Trigger Out A (trigger board option): a positive pulse after every sweep.
    trigger_output_on=(
        "TRIG:CHAN1:AUX1:INT SWE",
        "TRIG:CHAN1:AUX1:POS AFT",
        "TRIG:CHAN1:AUX1:STYP POS",
        "TRIG:CHAN1:AUX1 ON",
    ),
    format_commands={"real32": "FORM:DATA REAL,32", "real64": "FORM:DATA REAL,64", "ascii": "FORM:DATA ASC"},
    byte_order_commands={"norm": "FORM:BORD NORM", "swap": "FORM:BORD SWAP"},
    default_byte_order="swap",
)

DIALECTS: dict[str, Dialect] = {d.name: d for d in (KEYSIGHT, ROHDE_SCHWARZ)}


def get_dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ConfigError(
            f"radar.vna.dialect = {name!r}: unknown VNA dialect; known: {', '.join(DIALECTS)}"
        ) from None
