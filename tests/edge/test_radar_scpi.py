"""The pure pieces under the VNA driver and simulator: SCPI header matching, block and error codecs,
dialect tables and backoff."""

from __future__ import annotations

import numpy as np
import pytest
from vrclip.edge.config import SweepConfig
from vrclip.edge.errors import ConfigError
from vrclip.edge.radar import scpi
from vrclip.edge.radar.backoff import Backoff, retry_with_backoff
from vrclip.edge.radar.dialects import DIALECTS, get_dialect, scpi_number
from vrclip.edge.radar.scpi_parser import CommandTable, ScpiError, split_outside_quotes


def table() -> tuple[CommandTable, list[tuple[str, tuple[int, ...], tuple[str, ...]]]]:
    calls: list[tuple[str, tuple[int, ...], tuple[str, ...]]] = []
    t = CommandTable()
    for spec, query in (
        ("SENSe#:FREQuency:STARt", False),
        ("SENSe#:FREQuency:STOP", False),
        ("SENSe#:FREQuency:STARt", True),
        ("INITiate#[:IMMediate]", False),
        ("SOURce#:POWer[:LEVel][:IMMediate][:AMPLitude]", False),
        ("FORMat[:DATA]", False),
        ("*OPC", True),
    ):
        t.add(spec, lambda c, spec=spec: calls.append((spec, c.suffixes, c.params)), query=query)
    return t, calls


def run(message: str) -> tuple[list[tuple[str, tuple[int, ...], tuple[str, ...]]], ScpiError | None]:
    t, calls = table()
    units, error = t.parse_message(message)
    for handler, call in units:
        handler(call)
    return calls, error


@pytest.mark.parametrize(
    "message",
    [
        "SENS1:FREQ:STAR 1e9",
        "sense1:frequency:start 1e9",
        ":SENSe1:FREQuency:STARt 1e9",
        "SENS:FREQ:STAR 1e9",
    ],
)
def test_short_long_and_case_forms(message: str) -> None:
    calls, error = run(message)
    assert error is None and calls == [("SENSe#:FREQuency:STARt", (1,), ("1e9",))]


def test_optional_nodes_and_suffixes() -> None:
    calls, error = run(
        "INIT2;INIT1:IMM;:SOUR1:POW -5;:SOURce1:POWer:LEVel:IMMediate:AMPLitude 3;:FORM REAL,32"
    )
    assert error is None
    assert [c[:2] for c in calls] == [
        ("INITiate#[:IMMediate]", (2,)),
        ("INITiate#[:IMMediate]", (1,)),
        ("SOURce#:POWer[:LEVel][:IMMediate][:AMPLitude]", (1,)),
        ("SOURce#:POWer[:LEVel][:IMMediate][:AMPLitude]", (1,)),
        ("FORMat[:DATA]", ()),
    ]
    assert calls[-1][2] == ("REAL", "32")


def test_header_path_rule() -> None:
    calls, error = run("SENS1:FREQ:STAR 1;STOP 2;*OPC?;STAR?")
    assert error is None
    assert [c[0] for c in calls] == [
        "SENSe#:FREQuency:STARt",
        "SENSe#:FREQuency:STOP",
        "*OPC",
        "SENSe#:FREQuency:STARt",
    ]
    # Without the leading colon, FORM is looked up under SENS1:FREQ and does not exist there.
    calls, error = run("SENS1:FREQ:STAR 1;FORM ASC")
    assert len(calls) == 1 and error is not None and error.code == -113


def test_unknown_headers_and_suffixes() -> None:
    assert run("SENS1:FREQ:CENT 1")[1].code == -113
    assert run("FORM2:DATA ASC")[1].code == -114  # FORMat takes no suffix
    assert run("*OPC")[1].code == -113  # only the query form exists
    calls, error = run("SENS1:FREQ:STAR 1;BOGUS;SENS1:FREQ:STOP 2")
    assert len(calls) == 1 and error.code == -113  # units after a command error are not executed


def test_quotes_protect_separators() -> None:
    assert split_outside_quotes("CALC1:PAR:SDEF 'a;b','S21';*OPC?", ";") == [
        "CALC1:PAR:SDEF 'a;b','S21'",
        "*OPC?",
    ]
    with pytest.raises(ScpiError):
        split_outside_quotes("CALC1:PAR:SEL 'open", ";")


@pytest.mark.parametrize("data_format", ["real32", "real64"])
@pytest.mark.parametrize("byte_order", ["norm", "swap"])
def test_real_block_round_trip(data_format, byte_order) -> None:
    values = np.array([0.5, -1.25, 3e-7, 12.0])
    block = scpi.encode_block(scpi.encode_real(values, data_format, byte_order))
    size = 4 if data_format == "real32" else 8
    assert block[:2] == b"#" + str(len(str(4 * size))).encode()
    n = scpi.parse_block_prefix(block[:2])
    length = scpi.parse_block_length(block[2 : 2 + n], n)
    payload = block[2 + n :]
    assert length == len(payload) == 4 * size
    expected = values.astype(np.float32) if data_format == "real32" else values
    np.testing.assert_array_equal(scpi.decode_real(payload, data_format, byte_order), expected)
    big_endian = byte_order == "norm"
    assert payload[:size] == np.array([0.5], dtype=f"{'>' if big_endian else '<'}f{size}").tobytes()


def test_block_header_validation() -> None:
    with pytest.raises(ValueError, match="indefinite-length"):
        scpi.parse_block_prefix(b"#0")
    with pytest.raises(ValueError, match="starting with '#'"):
        scpi.parse_block_prefix(b"1,")
    with pytest.raises(ValueError, match="not a digit"):
        scpi.parse_block_prefix(b"#x")
    with pytest.raises(ValueError, match="not 3 decimal digits"):
        scpi.parse_block_length(b"1a2", 3)
    with pytest.raises(ValueError, match="more than"):
        scpi.parse_block_length(b"999999999", 9)
    with pytest.raises(ValueError, match="whole number"):
        scpi.decode_real(b"abcde", "real32", "norm")


def test_ascii_values() -> None:
    values = np.array([0.1, -2.5e-3, 7.0], dtype=np.float32).astype(np.float64)
    text = scpi.encode_ascii(values).decode()
    np.testing.assert_array_equal(scpi.parse_ascii(text).astype(np.float32), values.astype(np.float32))
    assert np.isnan(scpi.parse_ascii("1,NAN")[1])
    assert scpi.parse_ascii("-INF, +1.5E-03 ,.5,2.").tolist() == [-np.inf, 1.5e-3, 0.5, 2.0]
    with pytest.raises(ValueError, match="value 1: 'abc' is not an SCPI decimal number"):
        scpi.parse_ascii("1,abc,3")


@pytest.mark.parametrize(
    ("text", "value"),
    [("21", 21.0), ("+21", 21.0), ("-0.5", -0.5), (".5", 0.5), ("1.", 1.0), ("+1.000000000000E+09", 1e9),
     ("2e-3", 2e-3), (" 7 ", 7.0)],
)  # fmt: skip
def test_scpi_numbers_are_accepted(text: str, value: float) -> None:
    assert scpi.parse_number(text) == value


@pytest.mark.parametrize(
    "text",
    ["1_000", " inf", "nan", "NAN", "-Infinity", "1e999", "-1E+400", "0x10", "\u0661\u0662", "1e", "e5", ".",
     "+-1", "1.0.0", "", "1 2", "NINF", "\x0c1", "1\n", "9" * 400],
)  # fmt: skip
def test_what_float_accepts_but_scpi_does_not_is_refused(text: str) -> None:
    """Python's float() takes all of these (or gives inf); an instrument never sends them."""
    with pytest.raises(ValueError, match=r"is not an SCPI decimal number|beyond the range") as info:
        scpi.parse_number(text)
    assert repr(text[:32]) in str(info.value)


def test_non_finite_mnemonics_only_where_asked() -> None:
    assert np.isnan(scpi.parse_number("NAN", allow_non_finite=True))
    for loose in ("nan", " INF", "Infinity"):  # what float() would also take
        with pytest.raises(ValueError, match="not an SCPI decimal number"):
            scpi.parse_number(loose, allow_non_finite=True)
    assert scpi.parse_number("-INF", allow_non_finite=True) == -np.inf
    with pytest.raises(ValueError, match="beyond the range"):
        scpi.parse_number("1e999", allow_non_finite=True)  # a number, just too large: not a mnemonic
    with pytest.raises(ValueError, match="value 2: '1_0'"):
        scpi.parse_ascii("1,2,1_0")


def test_error_entries() -> None:
    assert scpi.parse_error('+0,"No error"') == (0, "No error")
    assert scpi.parse_error('-222,"Data out of range;SOUR1:POW 15"') == (
        -222,
        "Data out of range;SOUR1:POW 15",
    )
    assert scpi.format_error(-113, "FOO") == '-113,"Undefined header;FOO"'
    with pytest.raises(ValueError):
        scpi.parse_error("OK")
    for garbage in ("9" * 4000 + ',"x"', '\u0661,"x"'):  # a 4000-digit code; an Arabic-Indic digit
        with pytest.raises(ValueError, match="is not of the form"):
            scpi.parse_error(garbage)


def test_dialect_setup_commands() -> None:
    sweep = SweepConfig(start_hz=0.8e9, stop_hz=2.8e9, points=201, if_bandwidth_hz=1e5, power_dbm=-7.5)
    keysight = DIALECTS["keysight"].setup_commands(sweep, "real32", "swap")
    assert keysight[0] == "SENS1:SWE:MODE HOLD"
    assert "SENS1:FREQ:STAR 800000000" in keysight and "SOUR1:POW -7.5" in keysight
    assert keysight[-2:] == ["FORM:DATA REAL,32", "FORM:BORD SWAP"]
    rs = DIALECTS["rs"].setup_commands(sweep, "ascii", "norm")
    assert rs[0] == "INIT1:CONT OFF" and "CALC1:PAR:SDEF 'Trc1','S21'" in rs and "SENS1:BAND 100000" in rs
    assert DIALECTS["rs"].model_limits("Rohde-Schwarz", "ZNB8-4Port").max_hz == 8.5e9
    assert DIALECTS["rs"].model_limits("Keysight Technologies", "ZNB8") is None
    assert scpi_number(-0.0) == "0" and scpi_number(1.5e9) == "1500000000"
    with pytest.raises(ConfigError, match=r"radar\.vna\.dialect"):
        get_dialect("anritsu")


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    b = Backoff(0.1, 0.5)
    assert [b.next_delay() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.next_delay() == 0.1
    attempts = []

    def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise TimeoutError

    assert retry_with_backoff(flaky, Backoff(0.001, 0.002), retry_on=(TimeoutError,)) == 3
