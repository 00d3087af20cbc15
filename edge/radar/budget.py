"""Whether a radar config can deliver its frame rate: the sweeping alone takes channels x points / IFBW.

A VNA measures one point per 1 / IF bandwidth at best, and the switched array needs one sweep per
virtual channel, so a frame can never take less than channels x points / IFBW (settling, switching
and the data transfer come on top). A config that asks for more frames per second than that allows
runs, but slower than asked, and an engine trained at the asked rate then sees RF windows spanning
more time than in training. `vrclip-edge config check` says so before the rig is installed.
"""

from __future__ import annotations

from vrclip.edge.config import EdgeConfig


def sweeping_time_per_frame_s(config: EdgeConfig, channels: int) -> float:
    """Lower bound of one radar frame's duration: `channels` sweeps of points / IF bandwidth."""
    return channels * config.radar.sweep.min_sweep_s


def frame_rate_warning(config: EdgeConfig, channels: int) -> str | None:
    """A one-line warning naming the keys when radar.frame_rate_hz is out of reach, else None."""
    rate = config.radar.frame_rate_hz
    floor_s = sweeping_time_per_frame_s(config, channels)
    if floor_s * rate <= 1.0:
        return None
    sweep = config.radar.sweep
    needed_ifbw = channels * sweep.points * rate
    return (
        f"radar.frame_rate_hz {rate:g} is out of reach for a real VNA: {channels} channels x "
        f"radar.sweep.points {sweep.points} / radar.sweep.if_bandwidth_hz {sweep.if_bandwidth_hz:g} = "
        f"{floor_s * 1e3:.0f} ms of sweeping per frame, at most {1.0 / floor_s:.1f} frames/s before "
        f"settling and transfer; raise if_bandwidth_hz to at least {needed_ifbw:.0f}, use fewer points, "
        f"or lower frame_rate_hz to what the rig delivers (and train the engine at that rate)"
    )


__all__ = ["frame_rate_warning", "sweeping_time_per_frame_s"]
