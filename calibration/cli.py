"""`vrclip-calibrate`: the on-site calibration wizard (its steps land with the calibration issue)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from vrclip.edge.cli_support import make_app, run
from vrclip.edge.config import load_config
from vrclip.edge.geometry import load_geometry

app = make_app("vrclip-calibrate", "On-site calibration wizard for the radar array and cameras.")


@app.command("geometry")
def geometry(config: Path | None = typer.Option(None, "--config", "-c", help="Config TOML.")) -> None:
    """Print the array geometry the config selects, placed in the room (JSON)."""
    cfg = load_config(config)
    typer.echo(json.dumps(load_geometry(cfg.radar.array).to_dict(), indent=1))


def main() -> None:
    run(app)
