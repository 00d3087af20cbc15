"""The synthetic world: a room, occluders, lighting, and people walking in it.

One `Scene` feeds every simulated sensor so identities and positions agree across modalities and
the ground truth is known. A scene is a pure function of (spec, seed, time): asking for the same
instant twice gives the same state, whichever sensor asks first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from vrclip.edge.config import RoomConfig
from vrclip.edge.errors import UserError
from vrclip.edge.sim.identity import BODY_PARTS, Identity, identity_seed, make_identity

LIGHTING_PRESETS = ("day", "dusk", "night")
OCCLUSION_PRESETS = ("none", "wall", "furniture")


@dataclass(frozen=True)
class Lighting:
    """How the camera sees the room: overall gain, sensor noise and colour cast."""

    name: str
    brightness: float
    noise_std: float
    colour_cast: tuple[float, float, float]

    @classmethod
    def preset(cls, name: str) -> Lighting:
        presets = {
            "day": cls("day", 1.0, 3.0, (1.0, 1.0, 1.0)),
            "dusk": cls("dusk", 0.4, 7.0, (1.12, 0.95, 0.78)),
            "night": cls("night", 0.12, 11.0, (0.8, 0.95, 1.2)),
        }
        if name not in presets:
            raise UserError(f"lighting {name!r} is not known; choose one of {', '.join(LIGHTING_PRESETS)}")
        return presets[name]


@dataclass(frozen=True)
class Occluder:
    """A wall or a piece of furniture, as a vertical slab on the floor segment (x0,y0)-(x1,y1).

    It hides what is behind it from the cameras up to its height; to the radar it is a slab of
    dielectric that attenuates and delays slightly and reflects a little.
    """

    name: str
    x0: float
    y0: float
    x1: float
    y1: float
    height_m: float
    thickness_m: float = 0.1
    permittivity: float = 4.0
    loss_db: float = 3.0
    reflectivity: float = 0.6
    colour_rgb: tuple[int, int, int] = (150, 140, 130)

    @property
    def extra_path_m(self) -> float:
        """Extra electrical length of one crossing: the slab is slower than air."""
        return self.thickness_m * (math.sqrt(self.permittivity) - 1.0)

    @property
    def amplitude(self) -> float:
        return 10.0 ** (-self.loss_db / 20.0)


def occluder_preset(name: str, room: RoomConfig) -> tuple[Occluder, ...]:
    """Named occlusion conditions used by the recorder and the dataset generator."""
    if name == "none":
        return ()
    mid_y = room.y_min_m + 0.45 * (room.y_max_m - room.y_min_m)
    width = room.x_max_m - room.x_min_m
    if name == "wall":
        # A plasterboard partition across the left 55 % of the room.
        return (
            Occluder(
                "partition", room.x_min_m, mid_y, room.x_min_m + 0.55 * width, mid_y, 2.4,
                thickness_m=0.1, permittivity=2.8, loss_db=2.5, reflectivity=0.5, colour_rgb=(205, 200, 190),
            ),
        )  # fmt: skip
    if name == "furniture":
        return (
            Occluder(
                "cabinet", room.x_min_m + 0.2 * width, mid_y, room.x_min_m + 0.5 * width, mid_y, 1.3,
                thickness_m=0.4, permittivity=2.2, loss_db=2.0, reflectivity=0.8, colour_rgb=(120, 80, 50),
            ),
            Occluder(
                "sofa", room.x_min_m + 0.6 * width, mid_y + 0.8, room.x_min_m + 0.9 * width, mid_y + 0.8, 0.9,
                thickness_m=0.8, permittivity=1.8, loss_db=1.5, reflectivity=0.5, colour_rgb=(70, 90, 120),
            ),
        )  # fmt: skip
    raise UserError(f"occlusion {name!r} is not known; choose one of {', '.join(OCCLUSION_PRESETS)}")


@dataclass(frozen=True)
class PersonState:
    identity: Identity
    #: Floor position (x, y), metres.
    position: np.ndarray
    heading_rad: float
    gait_phase_rad: float
    #: (parts, 3) scatterer positions in room coordinates at this instant.
    scatterers: np.ndarray


@dataclass(frozen=True)
class SceneState:
    t_s: float
    people: tuple[PersonState, ...]


@dataclass
class _Walk:
    """A person's piecewise-linear path through random waypoints, parametrised by arc length."""

    points: np.ndarray
    cumulative: np.ndarray
    speed: float
    start_phase: float

    def at(self, t_s: float) -> tuple[np.ndarray, float]:
        s = (t_s * self.speed) % self.cumulative[-1]
        i = int(np.searchsorted(self.cumulative, s, side="right") - 1)
        i = min(max(i, 0), len(self.points) - 2)
        seg = self.points[i + 1] - self.points[i]
        length = float(np.hypot(*seg)) or 1e-9
        frac = (s - self.cumulative[i]) / length
        return self.points[i] + frac * seg, math.atan2(seg[0], seg[1])


@dataclass
class SceneSpec:
    """What the user chooses: who is in the room, what occludes, how light it is."""

    room: RoomConfig = field(default_factory=RoomConfig)
    people: tuple[str, ...] = ("person-00",)
    occlusion: str = "none"
    lighting: str = "day"
    #: Session seed: walking paths, sensor noise. Differs between sessions of the same people.
    seed: int = 0
    #: World seed: who each named identity *is* (body, gait, clothing). The same name and world seed
    #: give the same person in every session, which is what re-identification across sessions needs.
    world_seed: int = 0
    #: Keep walkers this far from the room's edges (metres).
    margin_m: float = 0.5
    #: Fixed point reflectors (x, y, z, amplitude) in room coordinates: a calibration target such as
    #: a corner reflector, part of the static room the radar sees.
    reflectors: tuple[tuple[float, float, float, float], ...] = ()
    #: Allow a room with nobody in it (what a calibration's empty-room step measures); any other
    #: scene without people is a mistake and is refused.
    empty_room: bool = False


class Scene:
    """People walking in a room. `state(t)` is deterministic for (spec, t)."""

    def __init__(self, spec: SceneSpec) -> None:
        if not spec.people and not spec.empty_room:
            raise UserError("the scene is empty: give at least one person (--people 1 or more)")
        if spec.seed < 0:  # numpy's generators, which the seed feeds, take no negative seed
            raise UserError(f"--seed {spec.seed}: a session seed is a non-negative integer")
        room = spec.room
        if (room.x_max_m - room.x_min_m) <= 2 * spec.margin_m or (
            room.y_max_m - room.y_min_m
        ) <= 2 * spec.margin_m:
            raise UserError(
                f"the room ({room.x_max_m - room.x_min_m:.2f} x {room.y_max_m - room.y_min_m:.2f} m) "
                "is too small "
                f"for people to walk in; make it larger than {2 * spec.margin_m:.1f} m each way"
            )
        self.spec = spec
        self.room = room
        self.lighting = Lighting.preset(spec.lighting)
        self.occluders = occluder_preset(spec.occlusion, room)
        self.identities = tuple(make_identity(name, spec.world_seed) for name in spec.people)
        self._walks = [self._make_walk(ident) for ident in self.identities]

    def _make_walk(self, ident: Identity) -> _Walk:
        rng = np.random.default_rng(identity_seed(ident.name, self.spec.seed) ^ 0x5A5A)
        lo = np.array([self.room.x_min_m, self.room.y_min_m]) + self.spec.margin_m
        hi = np.array([self.room.x_max_m, self.room.y_max_m]) - self.spec.margin_m
        # A closed loop of waypoints; consecutive waypoints at least 1 m apart so walking looks like walking.
        points = [rng.uniform(lo, hi)]
        while len(points) < 24:
            candidate = rng.uniform(lo, hi)
            if np.hypot(*(candidate - points[-1])) >= min(1.0, 0.5 * float(np.min(hi - lo))):
                points.append(candidate)
        points.append(points[0])
        pts = np.array(points)
        cumulative = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
        return _Walk(pts, cumulative, ident.gait.speed_mps, float(rng.uniform(0, 2 * math.pi)))

    def state(self, t_s: float) -> SceneState:
        people = []
        for ident, walk in zip(self.identities, self._walks, strict=True):
            position, heading = walk.at(t_s)
            phase = walk.start_phase + 2 * math.pi * ident.gait.cadence_hz * t_s
            people.append(
                PersonState(
                    ident, position, heading, phase % (2 * math.pi), _pose(ident, position, heading, phase)
                )
            )
        return SceneState(t_s, tuple(people))

    def static_scatterers(self) -> tuple[np.ndarray, np.ndarray]:
        """Room walls and occluders as point reflectors: ((S,3) positions, (S,) reflectivity)."""
        room = self.room
        pts, amps = [], []
        heights = (0.3, 1.0, 1.7, 2.3)
        for x in np.linspace(room.x_min_m - 0.3, room.x_max_m + 0.3, 9):  # back wall
            for z in heights:
                pts.append((x, room.y_max_m + 0.5, z))
                amps.append(2.0)
        for y in np.linspace(room.y_min_m, room.y_max_m + 0.5, 7):  # side walls
            for z in heights[::2]:
                pts.append((room.x_min_m - 0.3, y, z))
                pts.append((room.x_max_m + 0.3, y, z))
                amps.extend([1.2, 1.2])
        for x, y, z, amplitude in self.spec.reflectors:
            pts.append((x, y, z))
            amps.append(amplitude)
        for occ in self.occluders:
            for frac in np.linspace(0.0, 1.0, 5):
                x = occ.x0 + frac * (occ.x1 - occ.x0)
                y = occ.y0 + frac * (occ.y1 - occ.y0)
                for z in np.linspace(0.2, occ.height_m - 0.1, 3):
                    pts.append((x, y, z))
                    amps.append(occ.reflectivity)
        return np.asarray(pts, dtype=np.float64), np.asarray(amps, dtype=np.float64)


def _pose(ident: Identity, position: np.ndarray, heading: float, phase: float) -> np.ndarray:
    """Scatterer positions in room coordinates: limbs swing with the gait phase, the trunk bobs."""
    body = ident.body.scatterers.copy()
    gait = ident.gait
    swing = math.sin(phase)
    forward = np.zeros(len(BODY_PARTS))
    for part, sign, amount in (
        ("l_hand", 1, gait.arm_swing_m), ("r_hand", -1, gait.arm_swing_m),
        ("l_elbow", 1, 0.4 * gait.arm_swing_m), ("r_elbow", -1, 0.4 * gait.arm_swing_m),
        ("l_foot", -1, gait.leg_swing_m), ("r_foot", 1, gait.leg_swing_m),
        ("l_knee", -1, 0.5 * gait.leg_swing_m), ("r_knee", 1, 0.5 * gait.leg_swing_m),
    ):  # fmt: skip
        forward[BODY_PARTS.index(part)] = sign * amount * swing
    body[:, 1] += forward
    body[:, 2] += gait.bob_m * abs(math.sin(phase))
    c, s = math.cos(heading), math.sin(heading)
    # Body frame y (forward) points along the heading; heading is measured from +y towards +x.
    x = body[:, 0] * c + body[:, 1] * s
    y = -body[:, 0] * s + body[:, 1] * c
    return np.stack([x + position[0], y + position[1], body[:, 2]], axis=1)


def default_people(count: int) -> tuple[str, ...]:
    """Names used when the user asks for K people without naming them."""
    if count < 1:
        raise UserError(f"--people {count}: the scene is empty; give at least one person")
    return tuple(f"person-{i:02d}" for i in range(count))
