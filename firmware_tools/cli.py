"""`vrclip-firmware`: tools for the radar front end (switch controller, VNA profiles)."""

from __future__ import annotations

from pathlib import Path

import typer
from vrclip.edge.cli_support import make_app, run
from vrclip.edge.config import load_config
from vrclip.edge.geometry import load_geometry

app = make_app(
    "vrclip-firmware", "Radar front-end tools: switch controller, switching sequence, VNA profiles."
)


@app.command("channels")
def channels(config: Path | None = typer.Option(None, "--config", "-c", help="Config TOML.")) -> None:
    """Print the virtual-channel table in switching order as the controller runs it.

    Columns: channel, the Tx and Rx port indices the controller uses (0-based, exactly what `SEL <tx> <rx>`
    and the uploaded `SEQ` take; see docs/switch_protocol.md), and the pair's antenna names, which keep
    their 1-based labels (port 0 is T1/R1).
    """
    geometry = load_geometry(load_config(config).radar.array)
    typer.echo("channel\ttx_port(0-based)\trx_port(0-based)\tname")
    for c, (tx, rx) in enumerate(geometry.pairs):
        typer.echo(f"{c}\t{tx}\t{rx}\t{geometry.channel_name(c)}")


def main() -> None:
    run(app)
