"""README "On site, in order": every command it names exists with the options it spells, and the
commands that open the rig's sensors name the site config (without it they run on the defaults)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

README = Path(__file__).resolve().parents[1] / "README.md"
#: Commands that read the rig's sensors, sweep, engine or gallery from the config.
NEED_CONFIG = {
    ("vrclip-calibrate", "channels"),
    ("vrclip-edge", "enroll"),
    ("vrclip-edge", "record"),
    ("vrclip-edge", "run"),
    ("vrclip-firmware", "selftest"),
}


def _apps() -> dict[str, Any]:
    from vrclip.calibration.cli import app as calibrate
    from vrclip.edge.cli import app as edge
    from vrclip.export.cli import app as export
    from vrclip.firmware_tools.cli import app as firmware

    return {
        "vrclip-edge": typer.main.get_command(edge),
        "vrclip-calibrate": typer.main.get_command(calibrate),
        "vrclip-export": typer.main.get_command(export),
        "vrclip-firmware": typer.main.get_command(firmware),
    }


def _on_site_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## On site, in order", 1)[1].split("\n## ", 1)[0]
    spans = re.findall(r"`([^`]+)`", section)
    return [" ".join(span.split()) for span in spans if span.startswith("vrclip-")]


def test_the_on_site_steps_name_existing_commands_and_options_and_the_site_config() -> None:
    apps = _apps()
    commands = _on_site_commands()
    assert len(commands) >= 8
    for line in commands:
        program, *words = line.split()
        command = apps[program]
        path = [program]
        # typer may use a click of its own (typer._click): groups are told by their `commands`.
        while hasattr(command, "commands") and words and words[0] in command.commands:
            command = command.commands[words[0]]
            path.append(words.pop(0))
        assert not hasattr(command, "commands"), f"{line!r}: names no command of {path}"
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        unknown = [w for w in words if w.startswith("-") and w not in options]
        assert not unknown, f"{line!r}: {unknown} not options of {' '.join(path)}"
        if tuple(path[:2]) in NEED_CONFIG:
            assert "--config" in words, f"{line!r}: runs on the built-in defaults, not the site config"


def _seconds(words: list[str], default: float) -> float:
    """The --seconds a command line gives, or the option's default."""
    return float(words[words.index("--seconds") + 1]) if "--seconds" in words else default


def test_the_on_site_recordings_are_long_enough_for_what_reads_them() -> None:
    """A walk for `vrclip-calibrate camera` under MIN_WALK_S is refused, and a session for training
    needs a labelled run of the trainer's whole segment (the labeller leaves a track's first frames
    unlabelled): `record`'s 10-s default is too short for both, so the steps must give --seconds, at
    least the 15 s the camera section asks of a walk."""
    from vrclip.calibration.camera_pose import MIN_WALK_S
    from vrclip.edge.dataset import TRAINING_SEGMENT_S

    record = _apps()["vrclip-edge"].commands["record"]
    default = next(p.default for p in record.params if p.name == "seconds")
    least = 1.5 * max(MIN_WALK_S, TRAINING_SEGMENT_S)
    lines = [line.split() for line in _on_site_commands() if line.startswith("vrclip-edge record ")]
    assert len(lines) >= 2, "the walk and the training sessions"
    for words in lines:
        assert _seconds(words, default) >= least, f"{' '.join(words)!r}: record {least:g} s or more"
