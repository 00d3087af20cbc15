"""`vrclip-firmware`: the channel table a technician reads to drive the switch controller by hand."""

from __future__ import annotations

from typer.testing import CliRunner
from vrclip.edge.geometry import load_geometry
from vrclip.edge.radar.switch_protocol import format_sequence
from vrclip.firmware_tools.cli import app


def channel_rows() -> tuple[str, list[list[str]]]:
    result = CliRunner().invoke(app, ["channels"])
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    return header, [row.split("\t") for row in rows]


def test_channels_prints_the_port_indices_the_controller_takes() -> None:
    """Typing `SEL <tx> <rx>` from a row must connect that row's pair: the protocol is 0-based."""
    header, rows = channel_rows()
    assert header.split("\t") == ["channel", "tx_port(0-based)", "rx_port(0-based)", "name"]
    assert rows[0] == ["0", "0", "0", "T1-R1"]
    assert rows[13] == ["13", "1", "1", "T2-R2"]
    assert rows[-1] == ["143", "11", "11", "T12-R12"]
    # The same pairs, in the same order, as the SEQ line the edge box uploads to the controller.
    uploaded = format_sequence(load_geometry().pairs).split(" ", 2)[2].split(";")
    assert [f"{tx},{rx}" for _, tx, rx, _ in rows] == uploaded
    assert [int(channel) for channel, *_ in rows] == list(range(len(uploaded)))


def test_selftest_help_names_every_check_as_skip_takes_it() -> None:
    """`--skip` takes check names; the help is where a site engineer looks them up."""
    from vrclip.firmware_tools.selftest import CHECKS

    result = CliRunner().invoke(app, ["selftest", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"Checks (--skip names): {', '.join(CHECKS)}." in text
