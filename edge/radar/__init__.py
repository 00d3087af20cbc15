"""Radar acquisition: VNA driver, RF switch-matrix client, their simulators, and the RadarSource.

- `vna`: SCPI driver for the VNA (pyvisa; dialect table in `dialects`, wire formats in `scpi`).
- `switch`: client of the switch-matrix controller (protocol in docs/switch_protocol.md and
  `switch_protocol`).
- `source`: `RadarSource`, which steps the switch through the array's 144 Tx/Rx pairs and takes one
  sweep per pair, giving `RadarFrame`s; it reconnects on faults and counts drops.
- `sim_vna`, `sim_switch`, `frontend`, `simulated`: the simulated instruments over real TCP sockets,
  sharing one simulated RF path; `sim_cli` is the `vrclip-edge sim` command group; `bench` times
  acquisition against them.

Nothing is imported here, so `import vrclip.edge.radar.switch` does not pull in pyvisa or asyncio.
"""
