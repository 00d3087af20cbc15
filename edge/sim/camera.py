"""Render the synthetic world as a pinhole camera sees it: an RGB frame and a depth image.

Rendering is deliberately simple (flat-shaded body parts, textured clothing, painter's order with a
depth buffer) but it keeps what re-identification depends on: each identity's clothing colours and
texture, body proportions and gait pose, lighting that darkens and tints and adds noise, and
occluders that hide people from view. The same renderer at a lower resolution is the ZED's depth.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
from vrclip.edge.sim.identity import BODY_PARTS
from vrclip.edge.sim.occlusion import crosses
from vrclip.edge.sim.scene import Lighting, Occluder, PersonState, Scene, SceneState

_P = {name: i for i, name in enumerate(BODY_PARTS)}


@dataclass(frozen=True)
class PinholeCamera:
    """Camera at `position` looking along +y turned by `yaw_deg` about z (counter-clockwise seen from
    above, as the array's `yaw_deg`), pitched down by `pitch_deg`; x right, z up.

    Square pixels with the focal length `hfov_deg` gives. `principal` is the principal point in
    OpenCV's pixel convention (pixel centres at whole numbers; None: the image centre) and
    `distortion` OpenCV's (k1, k2, p1, p2, k3) lens distortion: what `vrclip-calibrate intrinsics`
    measures. A real 90-degree camera bends straight lines by tens of pixels towards the image edges;
    crops cut with a distortion-free model there miss the person. The undistorted camera keeps the
    plain pinhole arithmetic."""

    width: int
    height: int
    hfov_deg: float
    position: tuple[float, float, float]
    pitch_deg: float = 8.0
    yaw_deg: float = 0.0
    principal: tuple[float, float] | None = None
    distortion: tuple[float, ...] = ()

    @property
    def focal_px(self) -> float:
        return (self.width / 2) / math.tan(math.radians(self.hfov_deg) / 2)

    @property
    def plain(self) -> bool:
        """No principal-point offset and no distortion: the plain pinhole formulas apply."""
        return self.principal is None and not any(self.distortion)

    def matrix(self) -> np.ndarray:
        """OpenCV's 3x3 camera matrix (pixel centres at whole numbers)."""
        cx, cy = (
            self.principal if self.principal is not None else (self.width / 2 - 0.5, self.height / 2 - 0.5)
        )
        f = self.focal_px
        return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])

    def _coefficients(self) -> np.ndarray:
        """(k1, k2, p1, p2, k3), zeros where not given."""
        out = np.zeros(5)
        out[: len(self.distortion)] = self.distortion[:5]
        return out

    def _axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = math.radians(self.pitch_deg)
        y = math.radians(self.yaw_deg)
        level = np.array([-math.sin(y), math.cos(y), 0.0])  # the view direction, levelled
        right = np.array([math.cos(y), math.sin(y), 0.0])
        vertical = np.array([0.0, 0.0, 1.0])
        forward = math.cos(p) * level - math.sin(p) * vertical
        up = math.sin(p) * level + math.cos(p) * vertical
        return right, forward, up

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,3) room points -> ((N,2) pixel coordinates, (N,) depth along the optical axis). Pixel
        coordinates put pixel j's centre at j + 0.5."""
        right, forward, up = self._axes()
        d = np.asarray(points, dtype=np.float64) - np.asarray(self.position)
        depth = d @ forward
        safe = np.maximum(depth, 1e-3)
        if self.plain:
            u = self.width / 2 + self.focal_px * (d @ right) / safe
            v = self.height / 2 - self.focal_px * (d @ up) / safe
            return np.stack([u, v], axis=1), depth
        # OpenCV's camera frame: x right, y down, z along the optical axis.
        camera_frame = np.stack([d @ right, -(d @ up), safe], axis=1).reshape(-1, 1, 3)
        if len(camera_frame) == 0:
            return np.zeros((0, 2)), depth
        matrix = self.matrix()
        pixels, _ = cv2.projectPoints(camera_frame, np.zeros(3), np.zeros(3), matrix, self._coefficients())
        pixels = pixels.reshape(-1, 2) + 0.5
        # Past the radius where the lens model stops growing, OpenCV's formula folds points from far
        # outside the view back into the image. Such points are outside it: place them where the
        # distortion-free camera would, which is beyond the image edge too.
        radius = np.hypot(camera_frame[:, 0, 0], camera_frame[:, 0, 1]) / safe
        folded = radius > self._monotonic_radius
        if folded.any():
            f = self.focal_px
            cx, cy = matrix[:2, 2] + 0.5
            pixels[folded, 0] = cx + f * camera_frame[folded, 0, 0] / safe[folded]
            pixels[folded, 1] = cy + f * camera_frame[folded, 0, 1] / safe[folded]
        return pixels, depth

    @functools.cached_property
    def _monotonic_radius(self) -> float:
        """The undistorted radius (tan of the angle off the axis) up to which the radial distortion
        r (1 + k1 r^2 + k2 r^4 + k3 r^6) still grows with r. Found once per camera: the runtime
        projects every track's box through the same camera on every frame."""
        k1, k2, _, _, k3 = self._coefficients()
        # The growth 1 + 3 k1 s + 5 k2 s^2 + 7 k3 s^3 (s = r^2) first reaches zero at its smallest
        # positive root, however far out that lies (a slight barrel folds only at 80-odd degrees).
        roots = np.roots([7 * k3, 5 * k2, 3 * k1, 1.0])
        s = roots.real[(np.abs(roots.imag) <= 1e-9 * np.abs(roots)) & (roots.real > 0)]
        return math.sqrt(float(s.min())) if s.size else float("inf")

    def rays(self) -> np.ndarray:
        """(H, W, 3) unit-depth ray directions (forward component 1) for every pixel."""
        right, forward, up = self._axes()
        if self.plain:
            u = (np.arange(self.width) + 0.5 - self.width / 2) / self.focal_px
            v = (self.height / 2 - np.arange(self.height) - 0.5) / self.focal_px
            return forward + u[None, :, None] * right + v[:, None, None] * up
        cols, rows = np.meshgrid(
            np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64)
        )
        pixels = np.stack([cols, rows], axis=-1).reshape(-1, 1, 2)
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-9)
        normalised = cv2.undistortPoints(pixels, self.matrix(), self._coefficients(), criteria=criteria)
        x = normalised[:, 0, 0].reshape(self.height, self.width, 1)
        y = normalised[:, 0, 1].reshape(self.height, self.width, 1)
        return forward + x * right - y * up


class SceneRenderer:
    """Renders one scene for one camera; the static background is computed once."""

    def __init__(self, scene: Scene, camera: PinholeCamera, seed: int = 0, colour: bool = True) -> None:
        self.scene = scene
        self.camera = camera
        self.colour = colour
        self._occluder_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._background_rgb, self._background_depth = self._render_background()
        rng = np.random.default_rng(seed)
        # Sensor noise is drawn once as a tall tile; each frame takes a random window of it (cheap).
        self._noise = (
            rng.standard_normal((camera.height * 2, camera.width, 3)).astype(np.float32) if colour else None
        )
        self._rng = rng

    def _render_background(self) -> tuple[np.ndarray, np.ndarray]:
        """Floor with tiles, walls; depth along the optical axis for every pixel."""
        cam = self.camera
        room = self.scene.room
        rays = cam.rays()
        origin = np.asarray(cam.position)
        with np.errstate(divide="ignore", invalid="ignore"):
            candidates = [
                np.where(rays[..., 2] < 0, (0.0 - origin[2]) / rays[..., 2], np.inf),  # floor
                np.where(
                    rays[..., 1] > 0, (room.y_max_m + 0.5 - origin[1]) / rays[..., 1], np.inf
                ),  # back wall
                np.where(rays[..., 0] < 0, (room.x_min_m - 0.3 - origin[0]) / rays[..., 0], np.inf),
                np.where(rays[..., 0] > 0, (room.x_max_m + 0.3 - origin[0]) / rays[..., 0], np.inf),
                np.where(rays[..., 2] > 0, (2.8 - origin[2]) / rays[..., 2], np.inf),  # ceiling
            ]
        stack = np.stack([np.where(c > 0, c, np.inf) for c in candidates])
        which = np.argmin(stack, axis=0)
        depth = np.min(stack, axis=0).astype(np.float32)
        if not self.colour:
            return np.zeros((cam.height, cam.width, 3), np.uint8), depth
        hit = origin + rays * depth[..., None]
        palette = np.array(
            [[150, 135, 115], [200, 195, 185], [185, 190, 195], [185, 190, 195], [235, 235, 230]]
        )
        rgb = palette[which].astype(np.float32)
        tiles = ((np.floor(hit[..., 0] / 0.5) + np.floor(hit[..., 1] / 0.5)) % 2)[..., None]
        rgb = np.where((which == 0)[..., None], rgb * (0.85 + 0.15 * tiles), rgb)
        rgb *= np.clip(1.2 - 0.06 * depth, 0.6, 1.0)[..., None]  # light falls off into the room
        return np.clip(rgb, 0, 255).astype(np.uint8), depth

    def visible_fraction(self, person: PersonState) -> float:
        """Share of the person's body points inside the view and not hidden by an occluder."""
        pixels, depth = self.camera.project(person.scatterers)
        inside = (
            (depth > 0.3)
            & (pixels[:, 0] >= 0)
            & (pixels[:, 0] < self.camera.width)
            & (pixels[:, 1] >= 0)
            & (pixels[:, 1] < self.camera.height)
        )
        blocked = np.zeros(len(person.scatterers), bool)
        origin = np.asarray(self.camera.position)[None, :]
        for occ in self.scene.occluders:
            blocked |= crosses(origin, person.scatterers, occ)
        return float(np.mean(inside & ~blocked))

    def render(self, state: SceneState) -> tuple[np.ndarray | None, np.ndarray]:
        """Return (RGB uint8 or None when colour is off, depth float32 metres, inf where nothing)."""
        rgb = self._background_rgb.copy() if self.colour else None
        zbuf = self._background_depth.copy()
        drawables: list[tuple[float, object]] = []
        for person in state.people:
            _, d = self.camera.project(np.array([[person.position[0], person.position[1], 1.0]]))
            drawables.append((float(d[0]), person))
        for occ in self.scene.occluders:
            drawables.append((self._occluder_far_depth(occ), occ))
        for _, item in sorted(drawables, key=lambda pair: -pair[0]):
            if isinstance(item, Occluder):
                self._draw_occluder(item, rgb, zbuf)
            else:
                self._draw_person(item, rgb, zbuf)
        if rgb is not None:
            rgb = self._apply_lighting(rgb, self.scene.lighting)
        return rgb, zbuf

    def _occluder_far_depth(self, occ: Occluder) -> float:
        _, d = self.camera.project(np.array([[occ.x0, occ.y0, 0.0], [occ.x1, occ.y1, 0.0]]))
        return float(np.max(d))

    def _occluder_pixels(self, occ: Occluder) -> tuple[np.ndarray, np.ndarray]:
        """Flat pixel indices an occluder covers and its depth there; static, so computed once."""
        cached = self._occluder_cache.get(occ.name)
        if cached is not None:
            return cached
        cam = self.camera
        corners = np.array(
            [
                [occ.x0, occ.y0, 0.0],
                [occ.x1, occ.y1, 0.0],
                [occ.x1, occ.y1, occ.height_m],
                [occ.x0, occ.y0, occ.height_m],
            ]
        )
        pixels, depth = cam.project(corners)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        if np.all(depth <= 0.05):
            self._occluder_cache[occ.name] = empty
            return empty
        mask = np.zeros((cam.height, cam.width), np.uint8)
        cv2.fillConvexPoly(mask, np.round(pixels).astype(np.int32), 1)
        # Depth of the slab's plane along each pixel's ray: intersect rays with the vertical plane.
        rays = cam.rays().reshape(-1, 3)
        origin = np.asarray(cam.position)
        normal = np.array([occ.y1 - occ.y0, -(occ.x1 - occ.x0), 0.0])
        index = np.flatnonzero(mask.reshape(-1))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((np.array([occ.x0, occ.y0, 0.0]) - origin) @ normal) / (rays[index] @ normal)
        keep = np.isfinite(t) & (t > 0)
        result = (index[keep], t[keep].astype(np.float32))
        self._occluder_cache[occ.name] = result
        return result

    def _draw_occluder(self, occ: Occluder, rgb: np.ndarray | None, zbuf: np.ndarray) -> None:
        """A vertical slab, drawn with a per-pixel depth test so it hides exactly what is behind it."""
        index, t = self._occluder_pixels(occ)
        flat_z = zbuf.reshape(-1)
        nearer = t < flat_z[index]
        index, t = index[nearer], t[nearer]
        flat_z[index] = t
        if rgb is not None:
            shade = np.clip(1.1 - 0.05 * t, 0.6, 1.0)[:, None]
            rgb.reshape(-1, 3)[index] = (np.asarray(occ.colour_rgb, np.float32)[None, :] * shade).astype(
                np.uint8
            )

    def _draw_person(self, person: PersonState, rgb: np.ndarray | None, zbuf: np.ndarray) -> None:
        cam = self.camera
        pixels, depths = cam.project(person.scatterers)
        torso_depth = float(depths[_P["chest"]])
        if torso_depth < 0.3:
            return
        scale = cam.focal_px / torso_depth  # pixels per metre at the person
        app = person.identity.appearance
        pts = np.round(pixels).astype(np.int32)
        layer = np.zeros((cam.height, cam.width), np.uint8)
        colours: dict[int, tuple[int, int, int]] = {
            1: app.trousers_rgb,
            2: app.shirt_rgb,
            3: app.skin_rgb,
            4: app.hair_rgb,
        }

        def limb(a: str, b: str, c: str, width_m: float, label: int) -> None:
            thickness = max(1, round(width_m * scale))
            cv2.polylines(layer, [pts[[_P[a], _P[b], _P[c]]]], False, label, thickness, cv2.LINE_8)

        limb("l_hip", "l_knee", "l_foot", 0.14, 1)
        limb("r_hip", "r_knee", "r_foot", 0.14, 1)
        shoulder_w = person.identity.body.shoulder_width_m
        torso = np.array(
            [pts[_P["l_shoulder"]], pts[_P["r_shoulder"]], pts[_P["r_hip"]], pts[_P["l_hip"]]], dtype=np.int32
        )
        # From the side the shoulders overlap in the image; keep the torso at least a body depth wide.
        centre = torso.mean(axis=0)
        min_half = 0.5 * max(shoulder_w * 0.55, person.identity.body.torso_depth_m) * scale
        spread = np.abs(torso[:, 0] - centre[0])
        if spread.max() < min_half:
            torso[:, 0] = np.round(centre[0] + np.sign(torso[:, 0] - centre[0] + 1e-3) * min_half).astype(
                np.int32
            )
        cv2.fillConvexPoly(layer, cv2.convexHull(torso), 2)
        limb("l_shoulder", "l_elbow", "l_hand", 0.09, 2)
        limb("r_shoulder", "r_elbow", "r_hand", 0.09, 2)
        head = pts[_P["head"]]
        radius = max(2, round(0.11 * scale))
        cv2.circle(layer, (int(head[0]), int(head[1])), radius, 3, -1)
        cv2.ellipse(
            layer,
            (int(head[0]), int(head[1] - radius * 0.25)),
            (radius, int(radius * 0.8)),
            0,
            180,
            360,
            4,
            -1,
        )
        for hand in ("l_hand", "r_hand"):
            cv2.circle(layer, tuple(int(v) for v in pts[_P[hand]]), max(1, int(0.045 * scale)), 3, -1)
        # Composite only inside the figure's bounding box: full-frame masks cost ~3 ms a person.
        margin = radius + max(1, round(0.14 * scale)) + 2
        x0, y0 = np.maximum(pts.min(axis=0) - margin, 0)
        x1, y1 = np.minimum(pts.max(axis=0) + margin + 1, (cam.width, cam.height))
        if x0 >= x1 or y0 >= y1:
            return
        box = (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
        drawn = (layer[box] > 0) & (torso_depth < zbuf[box])
        if not drawn.any():
            return
        zbuf[box][drawn] = torso_depth
        if rgb is None:
            return
        ys, xs = np.nonzero(drawn)
        ys, xs = ys + int(y0), xs + int(x0)
        labels = layer[ys, xs]
        lut = np.zeros((5, 3), np.float32)
        for label, colour in colours.items():
            lut[label] = colour
        colour_px = lut[labels]
        shirt = labels == 2
        if app.texture != "solid" and shirt.any():
            period = max(2, int(app.texture_period_px * scale / 400))
            if app.texture == "stripes":
                pattern = (ys[shirt] // period) % 2 == 0
            elif app.texture == "checks":
                pattern = ((ys[shirt] // period) + (xs[shirt] // period)) % 2 == 0
            else:  # gradient: darker towards the waist
                top = ys[shirt].min()
                frac = (ys[shirt] - top) / max(1, np.ptp(ys[shirt]))
                colour_px[shirt] = (
                    colour_px[shirt] * (1 - 0.6 * frac[:, None])
                    + np.asarray(app.accent_rgb) * 0.6 * frac[:, None]
                )
                pattern = None
            if pattern is not None:
                colour_px[np.flatnonzero(shirt)[pattern]] = app.accent_rgb
        shade = np.clip(1.15 - 0.05 * torso_depth, 0.6, 1.0)
        rgb[ys, xs] = np.clip(colour_px * shade, 0, 255).astype(np.uint8)

    def _apply_lighting(self, rgb: np.ndarray, lighting: Lighting) -> np.ndarray:
        """rgb * gain + noise, saturated to uint8. OpenCV rather than numpy: multithreaded, and it
        releases the GIL, which the simulated rig's other threads (radar, pipeline) are waiting for."""
        gain = np.asarray(lighting.colour_cast, np.float64) * lighting.brightness
        offset = int(self._rng.integers(0, self.camera.height))
        noise = self._noise[offset : offset + self.camera.height]
        lit = cv2.multiply(rgb, (float(gain[0]), float(gain[1]), float(gain[2]), 0.0), dtype=cv2.CV_32F)
        out = cv2.scaleAdd(noise, float(lighting.noise_std), lit)
        # -0.5 then round-to-nearest = truncation, as the numpy version this replaced (and the
        # recorded datasets) did; max() first, so the absolute value never folds a negative back.
        return cv2.convertScaleAbs(cv2.max(out, 0.0), alpha=1.0, beta=-0.5)
