"""Identities of the synthetic world: body shape, gait and appearance, drawn from a seed.

Each identity must be distinguishable in *both* modalities, as real people are: the body's height,
width and scatterer layout shape the radar echo; the clothing colours and texture shape the image.
The same name and seed always give the same person.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

#: Body parts, in the order of the scatterer table. Limbs swing with the gait.
BODY_PARTS = (
    "head", "neck", "l_shoulder", "r_shoulder", "chest", "belly", "back", "l_hip", "r_hip",
    "l_elbow", "r_elbow", "l_hand", "r_hand", "l_knee", "r_knee", "l_foot", "r_foot",
)  # fmt: skip
TEXTURES = ("solid", "stripes", "checks", "gradient")


@dataclass(frozen=True)
class BodyShape:
    height_m: float
    shoulder_width_m: float
    hip_width_m: float
    torso_depth_m: float
    #: (parts, 3) scatterer offsets in the body frame at standing pose (x right, y forward, z up), metres.
    scatterers: np.ndarray
    #: (parts,) radar reflectivity of each scatterer (relative, torso ~1).
    reflectivity: np.ndarray


@dataclass(frozen=True)
class Gait:
    speed_mps: float
    cadence_hz: float  # strides (left+right) per second
    arm_swing_m: float
    leg_swing_m: float
    bob_m: float  # vertical bobbing of the trunk per step


@dataclass(frozen=True)
class Appearance:
    shirt_rgb: tuple[int, int, int]
    trousers_rgb: tuple[int, int, int]
    skin_rgb: tuple[int, int, int]
    hair_rgb: tuple[int, int, int]
    texture: str
    texture_period_px: int
    accent_rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Identity:
    name: str
    body: BodyShape
    gait: Gait
    appearance: Appearance


def identity_seed(name: str, world_seed: int) -> int:
    """A stable per-identity seed (Python's hash() is salted per process, so use a digest)."""
    digest = hashlib.sha256(f"{world_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    # Saturated-ish clothing colours in HSV, converted by hand to avoid an OpenCV round trip.
    h, s, v = rng.uniform(0, 6), rng.uniform(0.35, 0.95), rng.uniform(0.25, 0.95)
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    m = v - c
    r, g, b = (round(255 * (ch + m)) for ch in rgb)
    return (r, g, b)


def _scatterers(
    rng: np.random.Generator, height: float, shoulder: float, hip: float, depth: float
) -> np.ndarray:
    sw, hw = shoulder / 2, hip / 2
    table = {
        "head": (0.0, 0.0, height - 0.11),
        "neck": (0.0, 0.0, height * 0.84),
        "l_shoulder": (-sw, 0.0, height * 0.81),
        "r_shoulder": (sw, 0.0, height * 0.81),
        "chest": (0.0, depth / 2, height * 0.72),
        "belly": (0.0, depth / 2 * 1.1, height * 0.6),
        "back": (0.0, -depth / 2, height * 0.68),
        "l_hip": (-hw, 0.0, height * 0.52),
        "r_hip": (hw, 0.0, height * 0.52),
        "l_elbow": (-sw - 0.04, 0.0, height * 0.62),
        "r_elbow": (sw + 0.04, 0.0, height * 0.62),
        "l_hand": (-sw - 0.05, 0.02, height * 0.45),
        "r_hand": (sw + 0.05, 0.02, height * 0.45),
        "l_knee": (-hw * 0.6, 0.02, height * 0.28),
        "r_knee": (hw * 0.6, 0.02, height * 0.28),
        "l_foot": (-hw * 0.6, 0.05, 0.04),
        "r_foot": (hw * 0.6, 0.05, 0.04),
    }
    pts = np.array([table[p] for p in BODY_PARTS], dtype=np.float64)
    # Individual layout: small per-person displacement of every scatterer (posture, build, belongings).
    pts += rng.normal(0.0, 0.015, size=pts.shape)
    return pts


#: Spread of a person's overall radar cross-section (body mass and water content, clothing), dB.
RADAR_BUILD_DB = 4.5
#: Spread of each body part's reflectivity about that (fabric, carried metal: phone, keys, belt
#: buckle, glasses), dB. It places a person's radar differences at a height and side of the body.
RADAR_PART_DB = 6.0


def _radar_build(name: str, world_seed: int) -> np.ndarray:
    """(parts,) amplitude factors: what makes one person's echo differ from another's of the same shape.

    People's radar cross-sections differ by several dB, mostly through what they wear and carry,
    and those differences are what lets the radar recognise someone the camera cannot see (in the
    dark, behind a wall). Drawn from a stream of its own, so the body, gait and appearance drawn
    from the identity's main stream stay what they were.
    """
    rng = np.random.default_rng([identity_seed(name, world_seed), 0x52414441])  # "RADA"
    build = rng.normal(0.0, RADAR_BUILD_DB)
    parts = rng.normal(0.0, RADAR_PART_DB, size=len(BODY_PARTS))
    return 10.0 ** ((build + parts) / 20.0)


def make_identity(name: str, world_seed: int = 0) -> Identity:
    """Draw one person. Distributions are broad enough that 30+ identities stay separable."""
    rng = np.random.default_rng(identity_seed(name, world_seed))
    height = float(rng.uniform(1.52, 1.95))
    shoulder = float(rng.uniform(0.36, 0.50) * height / 1.75)
    hip = float(rng.uniform(0.28, 0.40) * height / 1.75)
    depth = float(rng.uniform(0.18, 0.32))
    scatterers = _scatterers(rng, height, shoulder, hip, depth)
    reflectivity = rng.uniform(0.5, 1.0, size=len(BODY_PARTS))
    torso = [BODY_PARTS.index(p) for p in ("chest", "belly", "back")]
    reflectivity[torso] *= 1.0 + depth * 4.0  # a broader torso reflects more
    reflectivity *= _radar_build(name, world_seed)
    body = BodyShape(height, shoulder, hip, depth, scatterers, reflectivity)
    gait = Gait(
        speed_mps=float(rng.uniform(0.6, 1.4)),
        cadence_hz=float(rng.uniform(0.8, 1.1)),
        arm_swing_m=float(rng.uniform(0.08, 0.28)),
        leg_swing_m=float(rng.uniform(0.18, 0.35)),
        bob_m=float(rng.uniform(0.01, 0.04)),
    )
    skin_tones = [(241, 194, 167), (224, 172, 125), (198, 134, 66), (141, 85, 36), (92, 58, 33)]
    hair = [(20, 20, 20), (90, 60, 30), (200, 170, 90), (140, 140, 140), (120, 40, 20)]
    appearance = Appearance(
        shirt_rgb=_colour(rng),
        trousers_rgb=_colour(rng),
        skin_rgb=skin_tones[int(rng.integers(len(skin_tones)))],
        hair_rgb=hair[int(rng.integers(len(hair)))],
        texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
        texture_period_px=int(rng.integers(6, 24)),
        accent_rgb=_colour(rng),
    )
    return Identity(name, body, gait, appearance)
