"""The simulated VNA + switch controller in a process of their own, as instruments are.

Served from a thread of the edge process, the simulators and the pipeline take turns on one GIL:
every SCPI message then waits for the pipeline's Python work (up to the 5 ms switch interval), and
the simulated rig crawled at ~4 radar frames/s where its sweeps allow ~10. In their own process they
answer at once, as a VNA with its own processor does. `vrclip-edge run --simulate` and the
acquisition benchmark both start them here.

The child gets everything that shapes the radar world as one JSON line on stdin (scene, front-end
errors, array placement, sweep, clock epoch), so its echoes match the simulated camera and depth of
the parent exactly; it prints `READY <vna_port> <switch_port>` and serves until its stdin closes, so
it never outlives the process that started it.
"""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict
from typing import Any

import numpy as np
from vrclip.edge.config import ArrayConfig, EdgeConfig, RoomConfig, SweepConfig, parse_config
from vrclip.edge.errors import UserError
from vrclip.edge.geometry import load_geometry
from vrclip.edge.radar.simulated import new_event_loop, run_simulated_radar, switch_url, vna_resource
from vrclip.edge.sim.radar import FrontEndErrors
from vrclip.edge.sim.scene import SceneSpec

#: How long start() waits for the child to listen (importing numpy and building the room response).
START_TIMEOUT_S = 60.0


def _spec_to_dict(spec: SceneSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["room"] = spec.room.model_dump(mode="json")
    return data


def _spec_from_dict(data: dict[str, Any]) -> SceneSpec:
    fields = dict(data)
    fields["room"] = RoomConfig(**fields["room"])
    fields["people"] = tuple(fields["people"])
    fields["reflectors"] = tuple(tuple(float(v) for v in r) for r in fields.get("reflectors", ()))
    return SceneSpec(**fields)


def _errors_to_dict(errors: FrontEndErrors) -> dict[str, Any]:
    gain = np.asarray(errors.gain, np.complex128)
    return {
        "gain_re": gain.real.tolist(),
        "gain_im": gain.imag.tolist(),
        "delay_s": np.asarray(errors.delay_s, np.float64).tolist(),
        "coupling": np.asarray(errors.coupling, np.float64).tolist(),
        "noise_std": float(errors.noise_std),
    }


def _errors_from_dict(data: dict[str, Any]) -> FrontEndErrors:
    return FrontEndErrors(
        gain=np.asarray(data["gain_re"]) + 1j * np.asarray(data["gain_im"]),
        delay_s=np.asarray(data["delay_s"], np.float64),
        coupling=np.asarray(data["coupling"], np.float64),
        noise_std=float(data["noise_std"]),
    )


def child_main() -> None:
    """Entry point of the simulator process (see the module docstring)."""
    params = json.loads(sys.stdin.readline())
    loop = new_event_loop(busy_poll=bool(params.get("busy_poll", False)))
    stop = asyncio.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    errors = params.get("errors")
    array = params.get("array")
    try:
        loop.run_until_complete(
            run_simulated_radar(
                params.get("host", "127.0.0.1"),
                0,
                0,
                _spec_from_dict(params["scene"]),
                SweepConfig(**params["sweep"]),
                params.get("dialect", "keysight"),
                geometry=load_geometry(ArrayConfig(**array)) if array else None,
                errors=_errors_from_dict(errors) if errors else None,
                epoch_ns=params.get("epoch_ns"),
                sweep_time_s=params.get("sweep_time_s"),
                on_ready=lambda st: print(f"READY {st.vna_port} {st.switch_port}", flush=True),
                stop=stop,
            )
        )
    finally:
        loop.close()


class SimulatorProcess:
    """Start/stop the child; its ports and VISA/switch addresses once started. A context manager too."""

    def __init__(
        self,
        scene_spec: SceneSpec,
        sweep: SweepConfig,
        *,
        dialect: str = "keysight",
        sweep_time_s: float | None = None,
        errors: FrontEndErrors | None = None,
        array: ArrayConfig | None = None,
        epoch_ns: int | None = None,
        busy_poll: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        """busy_poll: the child polls instead of sleeping (no wake-up latency, but it costs a core)."""
        self.host = host
        self._params: dict[str, Any] = {
            "host": host,
            "scene": _spec_to_dict(scene_spec),
            "sweep": sweep.model_dump(mode="json"),
            "dialect": dialect,
            "sweep_time_s": sweep_time_s,
            "errors": _errors_to_dict(errors) if errors is not None else None,
            "array": array.model_dump(mode="json") if array is not None else None,
            "epoch_ns": epoch_ns,
            "busy_poll": busy_poll,
        }
        self._proc: subprocess.Popen[bytes] | None = None
        self.vna_port = 0
        self.switch_port = 0

    @property
    def vna_resource(self) -> str:
        return vna_resource(self.host, self.vna_port)

    @property
    def switch_url(self) -> str:
        return switch_url(self.host, self.switch_port)

    def start(self) -> SimulatorProcess:
        code = "from vrclip.edge.radar.sim_process import child_main; child_main()"
        # stderr to a file, not a pipe: nobody reads a pipe while the child serves, and a full one
        # would stall it (a long run's warnings); the file is read only if the start fails.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        proc = self._proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write((json.dumps(self._params) + "\n").encode())
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
            line = proc.stdout.readline().decode(errors="replace") if ready else ""
        except OSError:
            line = ""
        parts = line.split()
        if len(parts) != 3 or parts[0] != "READY" or not (parts[1].isdigit() and parts[2].isdigit()):
            proc.kill()
            proc.wait(timeout=10)
            self._stderr.seek(0)
            tail = self._stderr.read()[-4000:].decode(errors="replace").strip().splitlines()[-3:]
            self._stderr.close()
            self._proc = None
            raise UserError(f"the radar simulator process did not start: {' | '.join(tail) or 'no output'}")
        self.vna_port, self.switch_port = int(parts[1]), int(parts[2])
        return self

    def edge_config(self, config: EdgeConfig) -> EdgeConfig:
        """`config` with its radar pointed at this simulator: the VNA's VISA resource and the switch
        controller's address. Unless the config chooses, the switch steps on the VNA's trigger
        output, as the simulated rig is wired (no round trip per channel: a faster rig)."""
        data = config.model_dump(mode="json")
        data["radar"]["vna"]["resource"] = self.vna_resource
        data["radar"]["switch"]["port"] = self.switch_url
        if "step" not in config.radar.switch.model_fields_set:
            data["radar"]["switch"]["step"] = "trigger"
        return parse_config(data, source="simulated rig")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        try:
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            self._stderr.close()

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
