"""Procedural indoor rooms rendered by vectorised ray casting, written in the AdaShare NYU-v2 layout.

Scene model
-----------
World frame: metres, right-handed, ``z`` up, the floor is ``z = 0``. A room is the box
``[0, W] x [0, D] x [0, H]`` (``W`` 3-6 m, ``D`` 4-7 m, ``H`` 2.5-3 m) whose six inner faces are infinite
axis-aligned planes: the floor ("floor"), the ceiling ("ceiling") and four walls ("wall"). The camera stands
near the ``y = 0`` wall at 1-1.6 m height and looks roughly along ``+y`` with a small random yaw, pitch and
roll. Its intrinsics are NYU's Kinect focal length (518.86 px at 640 px width, about 63 degrees horizontal
field of view) scaled to the image width, square pixels, principal point at the image centre.

Three to eight objects are added, each one or two exact primitives: axis-aligned boxes (bed, cabinet,
table, sofa, ...), spheres (pillow, otherprop, lamp shades), vertical capped cylinders (otherfurniture,
bag, toilet, sink, lamp poles) standing on the floor or on top of a supporting box, and thin boxes
against a wall (picture, window, door, whiteboard, mirror, television, curtain). Objects do not overlap
on the floor, keep 0.5 m from the camera and have their centre inside the view (a placement failing
either test is retried), so most of them are seen. Every pixel casts one ray; the nearest hit over all
primitives wins, so depth, labels and normals are exact (analytic surface normals flipped to face the
camera). Colour is Lambertian shading from one point light near the ceiling (with
hard shadows from the objects) plus ambient light, applied to a per-class albedo: a class-specific base
colour modulated by a deterministic stripe, checker or value-noise pattern in surface coordinates, so
that RGB carries information about class and geometry.

Like real Kinect data, some pixels are invalid: in about a third of the frames one object is labelled 255
(unlabeled) in ``seg``; normals are NaN on window and mirror pixels (specular / transparent surfaces) and
on a one-pixel band on the far side of every occlusion boundary (depth jump > 0.1 m between different
primitives). Depth is valid and positive everywhere because the room encloses the camera.

Camera convention (exposed as :attr:`Frame.camera`)
--------------------------------------------------
Camera frame: ``x`` right, ``y`` down, ``z`` forward. Pixel ``(row v, column u)`` (0-based) looks along
``((u - cx) / fx, (v - cy) / fy, 1)``; ``depth[v, u]`` is the ``z`` coordinate of the hit point in the
camera frame (not the ray length), so the 3-D point is ``depth * ((u - cx) / fx, (v - cy) / fy, 1)``.
``Camera.rotation`` maps camera-frame vectors to the world frame and ``Camera.position`` is the camera
centre in world coordinates.

File format (:func:`write_nyuv2`), paths relative to ``out``
-----------------------------------------------------------
``nyu_v2_3task.json``
    ``{"train": [[img, seg, normal_mask, depth], ...], "test": [...]}`` with relative POSIX paths.
``img/NNNN.png``
    8-bit RGB, ``H x W x 3``.
``seg/NNNN.png``
    8-bit single channel (mode ``L``): NYU-40 class id minus 1 (0..39, see :data:`NYU40_CLASSES`),
    255 = unlabeled / ignore.
``normal_mask/NNNN.png``
    8-bit RGB; channel ``c`` holds ``round((n_c + 1) * 127.5)`` clipped to ``[0, 254]``
    (:func:`encode_normals`) for the unit normal ``n`` in the axes of the real AdaShare files
    (:func:`to_nyu_axes`): R = right, G = forward (negative on surfaces facing the camera), B = up, i.e.
    ``(x, z, -y)`` of the camera frame. Invalid pixels are ``(255, 255, 255)``. OpenCV's ``imread``
    returns the channels in B, G, R order.
``depth/NNNN.npy``
    ``float32`` array ``(H, W)``, metres, z-depth, > 0.

Train frames are numbered ``0 .. n_train - 1`` and test frames continue from ``n_train``. Train frame
``i`` is rendered from child ``i`` of the first child of ``np.random.SeedSequence(seed)`` and test frame
``j`` from child ``j`` of its second child, so each frame depends only on ``(seed, split, index within
split)``: growing the training set never changes the test set. The same seed gives byte-identical files
with the same NumPy and Pillow versions on the same kind of CPU (PNGs use a fixed compression level and
carry no timestamps).
"""

from __future__ import annotations

import colorsys
import json
import numbers
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

NYU40_CLASSES: tuple[str, ...] = (
    "wall",
    "floor",
    "cabinet",
    "bed",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "bookshelf",
    "picture",
    "counter",
    "blinds",
    "desk",
    "shelves",
    "curtain",
    "dresser",
    "pillow",
    "mirror",
    "floor mat",
    "clothes",
    "ceiling",
    "books",
    "refridgerator",
    "television",
    "paper",
    "towel",
    "shower curtain",
    "box",
    "whiteboard",
    "person",
    "night stand",
    "toilet",
    "sink",
    "lamp",
    "bathtub",
    "bag",
    "otherstructure",
    "otherfurniture",
    "otherprop",
)
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(NYU40_CLASSES)}
IGNORE_LABEL = 255
INVALID_NORMAL_VALUE = 255
JSON_NAME = "nyu_v2_3task.json"
KINECT_FX_AT_640 = 518.8579  # NYU-v2 Kinect colour focal length in pixels for 640-pixel-wide images
PNG_COMPRESS_LEVEL = 1  # fixed so that the same frame always encodes to the same bytes

_EPS = 1e-6  # minimum ray parameter counted as a hit (rejects self-hits of shadow rays)
_SHADOW_OFFSET = 1e-4  # metres; shadow-ray origins are lifted off the surface by this much
_OCCLUSION_JUMP = 0.1  # metres; depth step between different primitives that invalidates normals
_NO_NORMAL_CLASSES = frozenset({CLASS_ID["window"], CLASS_ID["mirror"]})
_P_UNLABELED = 0.3  # probability that one object of a frame is labelled 255
_VIEW_TAN = (0.9 * 320 / KINECT_FX_AT_640, 0.9 * 240 / KINECT_FX_AT_640)  # objects are placed inside this


# --------------------------------------------------------------------------------------------- public types


@dataclass(frozen=True, eq=False)
class Camera:
    """Pinhole camera of one frame; see the module docstring for the conventions."""

    fx: float
    fy: float
    cx: float
    cy: float
    rotation: np.ndarray  # (3, 3) float64, world-from-camera rotation (world z up)
    position: np.ndarray  # (3,) float64, camera centre in world coordinates, metres

    def rays(self, height: int, width: int) -> np.ndarray:
        """Camera-frame ray directions ``((u - cx) / fx, (v - cy) / fy, 1)`` as a (H, W, 3) float64 array.

        The unit z component makes the ray parameter of a hit equal to its z-depth.
        """
        u = (np.arange(width, dtype=np.float64) - self.cx) / self.fx
        v = (np.arange(height, dtype=np.float64) - self.cy) / self.fy
        rays = np.empty((height, width, 3), dtype=np.float64)
        rays[..., 0] = u[None, :]
        rays[..., 1] = v[:, None]
        rays[..., 2] = 1.0
        return rays

    def backproject(self, depth: np.ndarray) -> np.ndarray:
        """Camera-frame 3-D points (H, W, 3) of a z-depth map."""
        height, width = depth.shape
        return self.rays(height, width) * np.asarray(depth, dtype=np.float64)[..., None]


@dataclass(frozen=True, eq=False)
class Frame:
    """One rendered view: the three task targets, the input image and the camera that produced them."""

    rgb: np.ndarray  # uint8 (H, W, 3)
    seg: np.ndarray  # uint8 (H, W), 0..39 or 255
    normal: np.ndarray  # float32 (H, W, 3), unit camera-frame normals facing the camera, NaN where invalid
    depth: np.ndarray  # float32 (H, W), z-depth in metres, > 0
    camera: Camera


# ------------------------------------------------------------------------------------------ class styles


@dataclass(frozen=True)
class _Style:
    """How a class looks: linear-RGB base albedo and a surface pattern (period in metres)."""

    base: tuple[float, float, float]
    pattern: str  # "plain" | "stripes" | "checker" | "noise"
    period: float
    contrast: float


_PATTERNS = ("stripes", "checker", "noise", "plain")
_STYLE_OVERRIDES: dict[str, _Style] = {
    "wall": _Style((0.72, 0.68, 0.60), "noise", 0.6, 0.15),
    "floor": _Style((0.42, 0.27, 0.15), "stripes", 0.15, 0.35),
    "ceiling": _Style((0.85, 0.85, 0.82), "plain", 1.0, 0.05),
    "window": _Style((0.60, 0.75, 0.90), "plain", 0.5, 0.10),
    "mirror": _Style((0.70, 0.74, 0.78), "noise", 0.05, 0.25),
    "bed": _Style((0.80, 0.78, 0.90), "checker", 0.25, 0.30),
    "door": _Style((0.55, 0.38, 0.22), "stripes", 0.3, 0.25),
    "whiteboard": _Style((0.92, 0.92, 0.92), "plain", 1.0, 0.05),
    "floor mat": _Style((0.55, 0.15, 0.12), "checker", 0.1, 0.40),
}


def _class_style(class_id: int) -> _Style:
    """Deterministic style of a class: golden-ratio hues keep neighbouring ids apart in colour."""
    name = NYU40_CLASSES[class_id]
    if name in _STYLE_OVERRIDES:
        return _STYLE_OVERRIDES[name]
    hue = (class_id * 0.618034) % 1.0
    sat = 0.35 + 0.45 * ((class_id * 0.377) % 1.0)
    val = 0.40 + 0.50 * ((class_id * 0.7548) % 1.0)
    base = colorsys.hsv_to_rgb(hue, sat, val)
    period = 0.06 + 0.04 * (class_id % 5)
    return _Style((base[0], base[1], base[2]), _PATTERNS[class_id % 4], period, 0.35)


_STYLES: tuple[_Style, ...] = tuple(_class_style(i) for i in range(len(NYU40_CLASSES)))


# ------------------------------------------------------------------------------------------- primitives


# Ray batches are stored component-major: directions, points and normals are (3, N) arrays, so every
# elementwise operation runs over a long contiguous axis (an (N, 3) layout is several times slower).
# All rays of a batch share one origin ``o`` of shape (3,): the camera centre or the light.


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product over the leading component axis of (3, N) or (3,) arrays."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


@dataclass(frozen=True)
class _Material:
    """Appearance and label of one primitive; ``label`` differs from ``class_id`` when unlabeled."""

    class_id: int
    label: int
    tint: tuple[float, float, float]


def _make_material(rng: np.random.Generator, name: str) -> _Material:
    """Material of a class with a random per-instance colour tint, so instances of a class vary."""
    tint = rng.uniform(0.85, 1.15, size=3)
    class_id = CLASS_ID[name]
    return _Material(class_id, class_id, (float(tint[0]), float(tint[1]), float(tint[2])))


@dataclass
class _Plane:
    """Infinite axis-aligned plane ``x[axis] = offset`` (room faces; the camera is always inside)."""

    axis: int
    offset: float
    mat: _Material

    def bounding_sphere(self) -> None:
        """Planes are unbounded: every ray is tested."""
        return None

    def hit(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ray parameter of the hit (inf on a miss) and face index (always 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.offset - o[self.axis]) / d[self.axis]
        return np.where(t > _EPS, t, np.inf), np.zeros(d.shape[1], dtype=np.int8)

    def surface(self, p: np.ndarray, d: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normal (sign fixed later) and in-plane surface coordinates of hit points."""
        normal = np.zeros_like(p)
        normal[self.axis] = 1.0
        return normal, p[[(self.axis + 1) % 3, (self.axis + 2) % 3]]


@dataclass
class _Box:
    """Axis-aligned box ``lo <= x <= hi``."""

    lo: np.ndarray
    hi: np.ndarray
    mat: _Material

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        """Centre and radius of a sphere enclosing the box (for ray culling)."""
        return (self.lo + self.hi) / 2, float(np.linalg.norm(self.hi - self.lo)) / 2

    def hit(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slab test: entry parameter and the axis of the entry face.

        A NaN slab parameter (origin exactly on a face, ray parallel to it) counts as "inside that slab":
        comparisons with NaN are false and ``fmin`` skips NaN.
        """
        n = d.shape[1]
        entry = np.full(n, -np.inf)
        exit_ = np.full(n, np.inf)
        face = np.zeros(n, dtype=np.int8)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d
            for axis in range(3):
                t1 = (self.lo[axis] - o[axis]) * inv[axis]
                t2 = (self.hi[axis] - o[axis]) * inv[axis]
                near = np.minimum(t1, t2)
                exit_ = np.fmin(exit_, np.maximum(t1, t2))
                later = near > entry
                entry = np.where(later, near, entry)
                face[later] = axis
            return np.where((entry <= exit_) & (entry > _EPS), entry, np.inf), face

    def surface(self, p: np.ndarray, d: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outward normal of the entry face and the two world coordinates spanning it."""
        cols = np.arange(p.shape[1])
        normal = np.zeros_like(p)
        normal[face, cols] = np.where(d[face, cols] > 0, -1.0, 1.0)
        return normal, np.stack([p[(face + 1) % 3, cols], p[(face + 2) % 3, cols]])


@dataclass
class _Sphere:
    """Sphere with centre ``c`` and radius ``r``."""

    c: np.ndarray
    r: float
    mat: _Material

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        """The sphere itself."""
        return self.c, self.r

    def hit(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Smallest positive root of the ray-sphere quadratic."""
        oc = o - self.c
        a = _dot(d, d)
        b = _dot(oc, d)
        cc = float(oc @ oc) - self.r * self.r
        disc = b * b - a * cc
        sq = np.sqrt(np.maximum(disc, 0.0))
        t0 = (-b - sq) / a
        t1 = (-b + sq) / a
        t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, np.inf))
        return np.where(disc >= 0, t, np.inf), np.zeros(d.shape[1], dtype=np.int8)

    def surface(self, p: np.ndarray, d: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Radial normal; longitude/latitude arc lengths as surface coordinates."""
        normal = p - self.c[:, None]
        normal /= np.sqrt(_dot(normal, normal))
        lon = np.arctan2(normal[1], normal[0])
        lat = np.arccos(np.clip(normal[2], -1.0, 1.0))
        return normal, np.stack([self.r * lon, self.r * lat])


@dataclass
class _Cylinder:
    """Vertical cylinder around ``(cx, cy)`` with radius ``r`` between heights ``z0 < z1``, capped."""

    cx: float
    cy: float
    r: float
    z0: float
    z1: float
    mat: _Material

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        """Centre and radius of a sphere enclosing the capped cylinder."""
        half = (self.z1 - self.z0) / 2
        return np.array([self.cx, self.cy, self.z0 + half]), float(np.hypot(self.r, half))

    def hit(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest of side wall (face 0), top cap (face 1) and bottom cap (face 2)."""
        ox, oy, oz = float(o[0]) - self.cx, float(o[1]) - self.cy, float(o[2])
        dx, dy, dz = d
        a = dx * dx + dy * dy
        b = ox * dx + oy * dy
        disc = b * b - a * (ox * ox + oy * oy - self.r * self.r)
        sq = np.sqrt(np.maximum(disc, 0.0))
        candidates = []
        with np.errstate(divide="ignore", invalid="ignore"):  # vertical rays: a == 0
            side = np.full(d.shape[1], np.inf)
            for root in ((-b + sq) / a, (-b - sq) / a):  # the nearer root is applied last and wins
                z = oz + root * dz
                ok = (disc >= 0) & (a > 0) & (root > _EPS) & (z >= self.z0) & (z <= self.z1)
                side = np.where(ok, root, side)
            candidates.append(side)
            for zc in (self.z1, self.z0):
                tc = (zc - oz) / dz
                px = ox + tc * dx
                py = oy + tc * dy
                ok = (tc > _EPS) & (px * px + py * py <= self.r * self.r)
                candidates.append(np.where(ok, tc, np.inf))
        stacked = np.stack(candidates)
        return stacked.min(axis=0), stacked.argmin(axis=0).astype(np.int8)

    def surface(self, p: np.ndarray, d: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Radial normal on the side, +-z on the caps; (arc length, height) or (x, y) as coordinates."""
        rx = p[0] - self.cx
        ry = p[1] - self.cy
        side = face == 0
        radius = np.hypot(rx, ry)
        safe = np.where(radius > 0, radius, 1.0)
        normal = np.stack(
            [
                np.where(side, rx / safe, 0.0),
                np.where(side, ry / safe, 0.0),
                np.where(side, 0.0, np.where(face == 1, 1.0, -1.0)),
            ]
        )
        u = np.where(side, self.r * np.arctan2(ry, rx), p[0])
        v = np.where(side, p[2], p[1])
        return normal, np.stack([u, v])


_Primitive = _Plane | _Box | _Sphere | _Cylinder


# ------------------------------------------------------------------------------------------ scene layout


@dataclass
class _Scene:
    """Everything a frame needs besides the image size."""

    room: list[_Plane]
    objects: list[list[_Primitive]]  # one list of primitives per object
    cam_position: np.ndarray
    cam_rotation: np.ndarray
    light: np.ndarray
    light_colour: np.ndarray
    ambient: float

    @property
    def primitives(self) -> list[_Primitive]:
        """Room faces followed by object primitives."""
        return [*self.room, *(p for obj in self.objects for p in obj)]


@dataclass
class _Layout:
    """Book-keeping while objects are placed: occupied floor area, free supports, used wall spans."""

    size: np.ndarray
    cam_xy: np.ndarray
    footprints: list[tuple[float, float, float, float]] = field(default_factory=list)
    supports: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)  # (class, lo, hi)
    wall_spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def copy(self) -> _Layout:
        """Independent copy, so that a rejected placement can be rolled back."""
        spans = {wall: list(v) for wall, v in self.wall_spans.items()}
        return _Layout(self.size, self.cam_xy, list(self.footprints), list(self.supports), spans)


# Floor boxes: (width range, depth range, height range, stands against a wall, can carry small items).
_FLOOR_BOXES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float], bool, bool]] = {
    "bed": ((1.4, 2.0), (1.9, 2.1), (0.45, 0.60), True, True),
    "cabinet": ((0.4, 0.9), (0.4, 0.6), (0.6, 1.2), True, True),
    "table": ((0.8, 1.6), (0.6, 1.0), (0.70, 0.78), False, True),
    "dresser": ((0.8, 1.4), (0.45, 0.6), (0.7, 1.1), True, True),
    "desk": ((1.0, 1.5), (0.6, 0.8), (0.72, 0.76), True, True),
    "night stand": ((0.4, 0.55), (0.35, 0.5), (0.45, 0.65), True, True),
    "bookshelf": ((0.6, 1.2), (0.28, 0.4), (1.4, 2.1), True, False),
    "sofa": ((1.6, 2.2), (0.8, 0.95), (0.7, 0.9), True, True),
    "refridgerator": ((0.6, 0.8), (0.6, 0.75), (1.6, 1.9), True, False),
    "counter": ((1.0, 2.0), (0.55, 0.65), (0.86, 0.92), True, True),
    "box": ((0.25, 0.6), (0.25, 0.6), (0.2, 0.5), False, False),
    "floor mat": ((0.6, 1.5), (0.5, 1.0), (0.01, 0.02), False, False),
}
# Floor cylinders: (radius range, height range).
_FLOOR_CYLINDERS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "otherfurniture": ((0.2, 0.45), (0.4, 0.75)),
    "bag": ((0.12, 0.22), (0.25, 0.45)),
    "toilet": ((0.18, 0.24), (0.38, 0.45)),
}
# Wall items: (width range, height range, bottom-height range, thickness range).
_WALL_ITEMS: dict[str, tuple[tuple[float, float], ...]] = {
    "picture": ((0.3, 1.0), (0.3, 0.8), (1.0, 1.5), (0.02, 0.04)),
    "window": ((0.8, 1.6), (0.9, 1.3), (0.8, 1.0), (0.03, 0.06)),
    "door": ((0.8, 0.95), (2.0, 2.1), (0.0, 0.0), (0.03, 0.05)),
    "whiteboard": ((1.0, 2.0), (0.8, 1.2), (0.9, 1.1), (0.02, 0.03)),
    "mirror": ((0.4, 0.8), (0.6, 1.1), (1.0, 1.3), (0.01, 0.02)),
    "television": ((0.8, 1.3), (0.45, 0.75), (1.0, 1.4), (0.05, 0.08)),
    "curtain": ((0.8, 1.6), (1.6, 2.1), (0.3, 0.6), (0.04, 0.08)),
}
# Small items standing on a supporting box, and which supports accept them.
_GENERIC_SUPPORTS = frozenset({"table", "desk", "dresser", "night stand", "cabinet", "counter"})
_ITEM_SUPPORTS: dict[str, frozenset[str]] = {
    "pillow": frozenset({"bed", "sofa"}),
    "sink": frozenset({"counter", "cabinet"}),
    "books": _GENERIC_SUPPORTS,
    "box": _GENERIC_SUPPORTS,
    "television": frozenset({"dresser", "table", "desk", "cabinet"}),
    "lamp": _GENERIC_SUPPORTS,
    "otherprop": _GENERIC_SUPPORTS,
}


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """One draw from a (low, high) range as a Python float."""
    return float(rng.uniform(bounds[0], bounds[1]))


def _footprint_free(layout: _Layout, rect: tuple[float, float, float, float], gap: float = 0.05) -> bool:
    """True when a floor rectangle is inside the room, clear of other objects and away from the camera."""
    x0, y0, x1, y1 = rect
    width, depth = layout.size[0], layout.size[1]
    if x0 < 0.0 or y0 < 0.0 or x1 > width or y1 > depth:
        return False
    cam_x, cam_y = layout.cam_xy
    if np.hypot(max(x0 - cam_x, 0.0, cam_x - x1), max(y0 - cam_y, 0.0, cam_y - y1)) < 0.5:
        return False
    return all(
        x0 >= bx1 + gap or bx0 >= x1 + gap or y0 >= by1 + gap or by0 >= y1 + gap
        for bx0, by0, bx1, by1 in layout.footprints
    )


def _free_rect(
    rng: np.random.Generator, layout: _Layout, sx: float, sy: float, hug_wall: bool
) -> tuple[float, float, float, float] | None:
    """Random free floor rectangle of size (sx along a wall, sy away from it), or None."""
    width, depth = float(layout.size[0]), float(layout.size[1])
    y_min = min(float(layout.cam_xy[1]) + 0.6, depth - sy)  # mostly in front of the camera
    if hug_wall:
        wall = rng.choice(("back", "left", "right"))
        if wall == "back":
            x0 = _uniform(rng, (0.0, max(width - sx, 0.0)))
            rect = (x0, depth - sy - 0.01, x0 + sx, depth - 0.01)
        else:
            y0 = _uniform(rng, (y_min, max(depth - sx, y_min)))
            x0 = 0.01 if wall == "left" else width - sy - 0.01
            rect = (x0, y0, x0 + sy, y0 + sx)
    else:
        if rng.random() < 0.5:
            sx, sy = sy, sx
        x0 = _uniform(rng, (0.0, max(width - sx, 0.0)))
        y0 = _uniform(rng, (y_min, max(depth - sy, y_min)))
        rect = (x0, y0, x0 + sx, y0 + sy)
    return rect if _footprint_free(layout, rect) else None


def _place_floor_box(rng: np.random.Generator, layout: _Layout, name: str) -> list[_Primitive] | None:
    """A furniture box standing on the floor; supports are remembered for small items."""
    wr, dr, hr, hug_wall, is_support = _FLOOR_BOXES[name]
    sx, sy, sz = _uniform(rng, wr), _uniform(rng, dr), _uniform(rng, hr)
    rect = _free_rect(rng, layout, sx, sy, hug_wall)
    if rect is None:
        return None
    layout.footprints.append(rect)
    lo = np.array([rect[0], rect[1], 0.0])
    hi = np.array([rect[2], rect[3], sz])
    if is_support:
        layout.supports.append((name, lo, hi))
    return [_Box(lo, hi, _make_material(rng, name))]


def _place_floor_cylinder(rng: np.random.Generator, layout: _Layout, name: str) -> list[_Primitive] | None:
    """A round object (stool, bag, toilet) standing on the floor."""
    rr, hr = _FLOOR_CYLINDERS[name]
    r, h = _uniform(rng, rr), _uniform(rng, hr)
    rect = _free_rect(rng, layout, 2 * r, 2 * r, hug_wall=False)
    if rect is None:
        return None
    layout.footprints.append(rect)
    cx, cy = (rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2
    return [_Cylinder(cx, cy, r, 0.0, h, _make_material(rng, name))]


def _place_floor_sphere(rng: np.random.Generator, layout: _Layout, name: str) -> list[_Primitive] | None:
    """A ball-like prop resting on the floor."""
    r = _uniform(rng, (0.1, 0.3))
    rect = _free_rect(rng, layout, 2 * r, 2 * r, hug_wall=False)
    if rect is None:
        return None
    layout.footprints.append(rect)
    centre = np.array([(rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2, r])
    return [_Sphere(centre, r, _make_material(rng, name))]


def _place_floor_lamp(rng: np.random.Generator, layout: _Layout, name: str) -> list[_Primitive] | None:
    """A floor lamp: thin pole plus spherical shade, both labelled lamp."""
    shade = _uniform(rng, (0.15, 0.25))
    rect = _free_rect(rng, layout, 2 * shade, 2 * shade, hug_wall=False)
    if rect is None:
        return None
    layout.footprints.append(rect)
    cx, cy = (rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2
    pole = _uniform(rng, (1.1, 1.6))
    mat = _make_material(rng, name)
    return [
        _Cylinder(cx, cy, _uniform(rng, (0.02, 0.04)), 0.0, pole, mat),
        _Sphere(np.array([cx, cy, pole + shade * 0.8]), shade, mat),
    ]


def _place_on_support(rng: np.random.Generator, layout: _Layout, name: str) -> list[_Primitive] | None:
    """A small item on top of a supporting box; each support carries one item."""
    options = [i for i, (kind, _, _) in enumerate(layout.supports) if kind in _ITEM_SUPPORTS[name]]
    if not options:
        return None
    _, lo, hi = layout.supports.pop(options[int(rng.integers(len(options)))])
    top = float(hi[2])
    room = min(hi[0] - lo[0], hi[1] - lo[1])
    mat = _make_material(rng, name)
    if name in ("pillow", "otherprop"):
        r = min(_uniform(rng, (0.1, 0.2)), room / 2)
        return [_Sphere(_spot(rng, lo, hi, r, top + r), r, mat)]
    if name == "lamp":
        shade = min(_uniform(rng, (0.1, 0.16)), room / 2)
        stem = _uniform(rng, (0.25, 0.45))
        base = _spot(rng, lo, hi, shade, top)
        return [
            _Cylinder(base[0], base[1], 0.02, top, top + stem, mat),
            _Sphere(base + np.array([0.0, 0.0, stem + shade * 0.8]), shade, mat),
        ]
    if name == "sink":
        r = min(_uniform(rng, (0.18, 0.26)), room / 2)
        base = _spot(rng, lo, hi, r, top)
        return [_Cylinder(base[0], base[1], r, top, top + _uniform(rng, (0.12, 0.2)), mat)]
    if name == "television":
        w = min(_uniform(rng, (0.5, 0.9)), hi[0] - lo[0])
        th = _uniform(rng, (0.05, 0.1))
        x0 = _uniform(rng, (lo[0], hi[0] - w))
        y0 = _uniform(rng, (lo[1], hi[1] - th))
        screen_top = top + _uniform(rng, (0.35, 0.6))
        return [_Box(np.array([x0, y0, top]), np.array([x0 + w, y0 + th, screen_top]), mat)]
    sx = min(_uniform(rng, (0.15, 0.4)), hi[0] - lo[0])  # books, box
    sy = min(_uniform(rng, (0.12, 0.35)), hi[1] - lo[1])
    x0 = _uniform(rng, (lo[0], hi[0] - sx))
    y0 = _uniform(rng, (lo[1], hi[1] - sy))
    item_top = top + _uniform(rng, (0.05, 0.3))
    return [_Box(np.array([x0, y0, top]), np.array([x0 + sx, y0 + sy, item_top]), mat)]


def _spot(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, margin: float, z: float) -> np.ndarray:
    """Random point at height z on a support top, at least ``margin`` from its edges where possible."""
    xs = (lo[0] + margin, hi[0] - margin) if hi[0] - lo[0] > 2 * margin else ((lo[0] + hi[0]) / 2,) * 2
    ys = (lo[1] + margin, hi[1] - margin) if hi[1] - lo[1] > 2 * margin else ((lo[1] + hi[1]) / 2,) * 2
    return np.array([_uniform(rng, xs), _uniform(rng, ys), z])


def _place_wall_item(rng: np.random.Generator, layout: _Layout, name: str) -> list[_Primitive] | None:
    """A thin box flat against the back, left or right wall, not overlapping other wall items."""
    wr, hr, br, tr = _WALL_ITEMS[name]
    width, depth, height = (float(v) for v in layout.size)
    w, h, bottom, th = _uniform(rng, wr), _uniform(rng, hr), _uniform(rng, br), _uniform(rng, tr)
    if bottom + h > height - 0.05:
        return None
    wall = str(rng.choice(("back", "left", "right")))
    length = width if wall == "back" else depth
    lo_u = 0.1 if wall == "back" else min(float(layout.cam_xy[1]) + 0.5, depth)
    if length - w - 0.1 <= lo_u:
        return None
    u0 = _uniform(rng, (lo_u, length - w - 0.1))
    spans = layout.wall_spans.setdefault(wall, [])
    if any(u0 < b + 0.1 and a < u0 + w + 0.1 for a, b in spans):
        return None
    spans.append((u0, u0 + w))
    if wall == "back":
        lo, hi = (u0, depth - th, bottom), (u0 + w, depth, bottom + h)
    elif wall == "left":
        lo, hi = (0.0, u0, bottom), (th, u0 + w, bottom + h)
    else:
        lo, hi = (width - th, u0, bottom), (width, u0 + w, bottom + h)
    return [_Box(np.array(lo), np.array(hi), _make_material(rng, name))]


_Placer = Callable[[np.random.Generator, _Layout, str], "list[_Primitive] | None"]
_CATALOGUE: tuple[tuple[str, _Placer, float], ...] = (
    *((name, _place_floor_box, 1.0) for name in _FLOOR_BOXES),
    *((name, _place_floor_cylinder, 0.6) for name in _FLOOR_CYLINDERS),
    *((name, _place_wall_item, 1.0) for name in _WALL_ITEMS),
    ("otherprop", _place_floor_sphere, 0.5),
    ("lamp", _place_floor_lamp, 0.6),
    *((name, _place_on_support, 1.2) for name in _ITEM_SUPPORTS),
)
_CATALOGUE_CDF = np.cumsum([w for _, _, w in _CATALOGUE]) / sum(w for _, _, w in _CATALOGUE)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """World-from-camera rotation: level camera looking along +y, then roll, pitch (up > 0) and yaw."""
    base = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # columns: right, down, forward
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    yaw_world = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    pitch_cam = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    roll_cam = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return yaw_world @ base @ pitch_cam @ roll_cam


def _in_view(prims: list[_Primitive], position: np.ndarray, rotation: np.ndarray) -> bool:
    """Whether some primitive's centre lies inside a nominal 4:3 Kinect view (so objects are seen)."""
    for prim in prims:
        centre = prim.bounding_sphere()[0]
        x, y, z = rotation.T @ (centre - position)
        if z > 0 and abs(x) < _VIEW_TAN[0] * z and abs(y) < _VIEW_TAN[1] * z:
            return True
    return False


def _sample_scene(rng: np.random.Generator) -> _Scene:
    """Random room, camera pose, light and 3-8 objects."""
    size = np.array([_uniform(rng, (3.0, 6.0)), _uniform(rng, (4.0, 7.0)), _uniform(rng, (2.5, 3.0))])
    width, depth, height = size
    faces = (("floor", 2, 0.0), ("ceiling", 2, height), ("wall", 0, 0.0), ("wall", 0, width))
    faces += (("wall", 1, 0.0), ("wall", 1, depth))
    wall_mat = _make_material(rng, "wall")  # one paint for all four walls
    room = [
        _Plane(axis, float(offset), wall_mat if name == "wall" else _make_material(rng, name))
        for name, axis, offset in faces
    ]
    cam_position = np.array(
        [width * _uniform(rng, (0.3, 0.7)), _uniform(rng, (0.3, 1.0)), _uniform(rng, (1.0, 1.6))]
    )
    yaw, pitch, roll = np.deg2rad([_uniform(rng, (-20, 20)), _uniform(rng, (-18, 5)), _uniform(rng, (-3, 3))])
    cam_rotation = _rotation(float(yaw), float(pitch), float(roll))
    layout = _Layout(size=size, cam_xy=cam_position[:2])
    objects: list[list[_Primitive]] = []
    target = int(rng.integers(3, 9))
    for _ in range(100):
        if len(objects) == target:
            break
        pick = min(int(np.searchsorted(_CATALOGUE_CDF, rng.random(), side="right")), len(_CATALOGUE) - 1)
        name, placer, _ = _CATALOGUE[pick]  # weighted choice; much cheaper than rng.choice(p=...)
        trial = layout.copy()
        placed = placer(rng, trial, name)
        if placed is not None and _in_view(placed, cam_position, cam_rotation):
            objects.append(placed)
            layout = trial
    if objects and rng.random() < _P_UNLABELED:
        k = int(rng.integers(len(objects)))
        objects[k] = [replace(p, mat=replace(p.mat, label=IGNORE_LABEL)) for p in objects[k]]
    light = np.array([width * _uniform(rng, (0.25, 0.75)), depth * _uniform(rng, (0.25, 0.75)), height - 0.1])
    return _Scene(
        room=room,
        objects=objects,
        cam_position=cam_position,
        cam_rotation=cam_rotation,
        light=light,
        light_colour=np.array([1.0, _uniform(rng, (0.9, 1.0)), _uniform(rng, (0.75, 0.95))]),
        ambient=_uniform(rng, (0.2, 0.35)),
    )


# --------------------------------------------------------------------------------------------- rendering


def _unit32(d: np.ndarray) -> np.ndarray:
    """Unit ray directions in float32: precise enough for the (deliberately loose) culling test."""
    return (d / np.sqrt(_dot(d, d))).astype(np.float32)


def _cone_select(prim: _Primitive, o: np.ndarray, unit: np.ndarray) -> np.ndarray | None:
    """Indices of the rays from ``o`` that can reach the primitive's bounding sphere (None: all of them).

    A ray from outside a sphere meets it iff the angle between the ray and the direction to the centre is
    at most asin(radius / distance). This cheap test lets the exact intersection run on a few rays only;
    the radius and the cosine limit get margins far above float32 error, so culling never changes a result.
    """
    bounds = prim.bounding_sphere()
    if bounds is None:
        return None
    centre, radius = bounds
    radius = radius * 1.01 + 1e-3
    to_centre = centre - o
    dist = float(np.sqrt(to_centre @ to_centre))
    if dist <= radius:
        return None
    cos_limit = np.sqrt(1.0 - (radius / dist) ** 2) - 1e-4
    return np.flatnonzero(_dot(unit, (to_centre / dist).astype(np.float32)) >= cos_limit)


def _trace(prims: Sequence[_Primitive], o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, ...]:
    """Nearest hit over all primitives of rays from one origin: ray parameter, primitive and face index."""
    n = d.shape[1]
    t_best = np.full(n, np.inf)
    idx = np.full(n, -1, dtype=np.int16)  # 16-bit keys let the stable argsort use radix sort
    face = np.zeros(n, dtype=np.int8)
    unit = _unit32(d)
    for k, prim in enumerate(prims):
        sel = _cone_select(prim, o, unit)
        if sel is None:
            t, f = prim.hit(o, d)
            closer = t < t_best
            t_best = np.where(closer, t, t_best)
            idx[closer] = k
            face[closer] = f[closer]
        elif len(sel):
            t, f = prim.hit(o, d[:, sel])
            closer = t < t_best[sel]
            rows = sel[closer]
            t_best[rows] = t[closer]
            idx[rows] = k
            face[rows] = f[closer]
    return t_best, idx, face


def _occluded(prims: Sequence[_Primitive], o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Whether each segment ``o -> o + d`` (parameter in (0, 1)) is blocked by a primitive."""
    blocked = np.zeros(d.shape[1], dtype=bool)
    unit = _unit32(d)
    for prim in prims:
        sel = _cone_select(prim, o, unit)
        if sel is None:
            blocked |= prim.hit(o, d)[0] < 1.0
        elif len(sel):
            blocked[sel] |= prim.hit(o, d[:, sel])[0] < 1.0
    return blocked


def _hash01(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice point (integer mixing hash)."""
    x = (i.astype(np.uint64) * np.uint64(0x9E3779B1)) ^ (j.astype(np.uint64) * np.uint64(0x85EBCA77))
    x &= np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x2C1B3C6D)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(12)
    x = (x * np.uint64(0x297A2D39)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    return (x & np.uint64(0xFFFFFF)).astype(np.float64) / float(0x1000000)


_NOISE_SIZE = 256  # lattice values repeat every 256 cells, far beyond any room at texture scale
_NOISE_TABLE = _hash01(*np.meshgrid(np.arange(_NOISE_SIZE), np.arange(_NOISE_SIZE), indexing="ij"))


def _value_noise(u: np.ndarray, v: np.ndarray, salt: int) -> np.ndarray:
    """Smooth lattice noise in [0, 1]: bilinear blend of tabulated corner values with smoothstep weights.

    The salt shifts the lattice so that classes sharing the table still get different patterns.
    """
    i0, j0 = np.floor(u), np.floor(v)
    fu, fv = u - i0, v - j0
    wu, wv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    mask = _NOISE_SIZE - 1
    i = (i0.astype(np.int64) + 37 * salt) & mask
    j = (j0.astype(np.int64) + 101 * salt) & mask
    i1, j1 = (i + 1) & mask, (j + 1) & mask
    c00, c10, c01, c11 = _NOISE_TABLE[i, j], _NOISE_TABLE[i1, j], _NOISE_TABLE[i, j1], _NOISE_TABLE[i1, j1]
    return (c00 * (1 - wu) + c10 * wu) * (1 - wv) + (c01 * (1 - wu) + c11 * wu) * wv


def _albedo(mat: _Material, uv: np.ndarray) -> np.ndarray:
    """Linear-RGB albedo (3, M) of a class at surface coordinates uv (2, M), in metres."""
    style = _STYLES[mat.class_id]
    u, v = uv[0] / style.period, uv[1] / style.period
    if style.pattern == "stripes":
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * u)
    elif style.pattern == "checker":
        pattern = (np.floor(u) + np.floor(v)) % 2
    elif style.pattern == "noise":
        pattern = _value_noise(u, v, mat.class_id)
    else:
        pattern = _value_noise(u * 0.3, v * 0.3, mat.class_id)
    colour = np.asarray(style.base) * np.asarray(mat.tint)
    return colour[:, None] * (1.0 - style.contrast * pattern)


def _shade(scene: _Scene, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Irradiance factor per point: ambient plus Lambertian point light with falloff and hard shadows."""
    to_light = scene.light[:, None] - points
    dist = np.sqrt(_dot(to_light, to_light))
    lambert = np.maximum(_dot(normals, to_light) / dist, 0.0)
    # Shadow rays run from the light to each point, lifted off its surface along the (camera-facing)
    # normal: all rays share one origin, which the culling needs, and a lit convex surface never shadows
    # itself. Unlit points are traced too; that is cheaper than gathering the lit ones.
    occluders = [prim for obj in scene.objects for prim in obj]
    lambert[_occluded(occluders, scene.light, _SHADOW_OFFSET * normals - to_light)] = 0.0
    falloff = 1.0 / (1.0 + (dist / 4.0) ** 2)
    return scene.ambient + 1.1 * lambert * falloff


def _occlusion_band(depth: np.ndarray, prim: np.ndarray) -> np.ndarray:
    """Pixels on the far side of an occlusion boundary (a neighbour of another primitive is much nearer)."""
    band = np.zeros(depth.shape, dtype=bool)
    for axis in (0, 1):
        head = [slice(None), slice(None)]
        tail = [slice(None), slice(None)]
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        a, b = depth[tuple(head)], depth[tuple(tail)]
        different = prim[tuple(head)] != prim[tuple(tail)]
        band[tuple(head)] |= different & (a - b > _OCCLUSION_JUMP)
        band[tuple(tail)] |= different & (b - a > _OCCLUSION_JUMP)
    return band


def _to_srgb(linear: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma-encode linear RGB (3, N), add mild per-pixel sensor noise and quantise to uint8 (3, N)."""
    encoded = np.clip(linear.astype(np.float32), 0.0, 1.0) ** np.float32(1 / 2.2) * np.float32(255.0)
    encoded += rng.standard_normal(size=encoded.shape[1], dtype=np.float32)
    return np.clip(np.rint(encoded), 0, 255).astype(np.uint8)


def _check_positive_int(name: str, value: object) -> None:
    """Reject non-integers (including bools) and values < 1 with a message naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def render_frame(rng: np.random.Generator, height: int, width: int) -> Frame:
    """Render one random room; all randomness comes from ``rng`` so a seeded generator reproduces it."""
    _check_positive_int("height", height)
    _check_positive_int("width", width)
    scene = _sample_scene(rng)
    fx = KINECT_FX_AT_640 * width / 640.0
    camera = Camera(fx, fx, (width - 1) / 2.0, (height - 1) / 2.0, scene.cam_rotation, scene.cam_position)
    rotation = camera.rotation
    d = rotation @ camera.rays(height, width).reshape(-1, 3).T  # (3, N) world directions, camera z = 1
    prims = scene.primitives
    t, idx, face = _trace(prims, camera.position, d)
    if not np.all(np.isfinite(t)):
        raise RuntimeError("a camera ray escaped the room; the scene sampler is broken")
    # Group the pixels by primitive (one gather), shade in that order, and restore image order at the end:
    # much cheaper than scattering every per-primitive result into image order.
    order = np.argsort(idx, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(idx, minlength=len(prims)))])
    d_s = d[:, order]
    points = camera.position[:, None] + t[order] * d_s
    face_s = face[order]
    n_world = np.empty_like(d)
    albedo = np.empty_like(d)
    seg = np.empty(t.shape, dtype=np.uint8)
    no_normal = np.zeros(t.shape, dtype=bool)
    for k, prim in enumerate(prims):
        a, b = bounds[k], bounds[k + 1]
        if a == b:
            continue
        n_world[:, a:b], uv = prim.surface(points[:, a:b], d_s[:, a:b], face_s[a:b])
        albedo[:, a:b] = _albedo(prim.mat, uv)
        seg[a:b] = prim.mat.label
        no_normal[a:b] = prim.mat.class_id in _NO_NORMAL_CLASSES
    n_world *= np.where(_dot(n_world, d_s) > 0, -1.0, 1.0) / np.sqrt(_dot(n_world, n_world))  # face camera
    colour = albedo * _shade(scene, points, n_world) * scene.light_colour[:, None]
    unsort = np.empty_like(order)
    unsort[order] = np.arange(len(order))
    rgb = _to_srgb(colour[:, unsort], rng)
    normal = (rotation.T @ n_world)[:, unsort]  # camera-frame components
    normal /= np.sqrt(_dot(normal, normal))
    seg = seg[unsort]
    no_normal = no_normal[unsort]
    depth = t.reshape(height, width)
    invalid = no_normal.reshape(height, width) | _occlusion_band(depth, idx.reshape(height, width))
    normal = normal.T.reshape(height, width, 3).astype(np.float32)
    normal[invalid] = np.nan
    return Frame(
        rgb=np.ascontiguousarray(rgb.T).reshape(height, width, 3),
        seg=seg.reshape(height, width),
        normal=normal,
        depth=depth.astype(np.float32),
        camera=camera,
    )


# ------------------------------------------------------------------------------------------ file output


def to_nyu_axes(normal: np.ndarray) -> np.ndarray:
    """Camera-frame normals (x right, y down, z forward) -> the axes of AdaShare's NYU-v2 normal PNGs.

    The real files store (right, forward, up): on the four reference samples the floor decodes to
    B ~ +0.93, the ceiling to B ~ -0.98, walls facing the camera to G ~ -0.8, and R grows with the depth
    slope to the right, as camera x does. This is the proper rotation (x, y, z) -> (x, z, -y); NaN stays NaN.
    """
    normal = np.asarray(normal)
    return np.stack([normal[..., 0], normal[..., 2], -normal[..., 1]], axis=-1)


def encode_normals(normal: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) with NaN where invalid -> uint8 PNG values; invalid pixels become 255."""
    normal = np.asarray(normal, dtype=np.float64)
    if normal.ndim != 3 or normal.shape[-1] != 3:
        raise ValueError(f"normal must have shape (H, W, 3), got {normal.shape}")
    invalid = np.isnan(normal).any(axis=-1)
    encoded = np.clip(np.rint((np.nan_to_num(normal) + 1.0) * 127.5), 0, 254).astype(np.uint8)
    encoded[invalid] = INVALID_NORMAL_VALUE
    return encoded


def _save_png(array: np.ndarray, path: Path) -> None:
    """PNG with a fixed compression level and no metadata, so equal arrays give equal bytes."""
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _write_frame(root: Path, stem: str, frame: Frame) -> list[str]:
    """Write the four files of one frame under ``root`` and return their relative paths."""
    rel = [f"img/{stem}.png", f"seg/{stem}.png", f"normal_mask/{stem}.png", f"depth/{stem}.npy"]
    _save_png(frame.rgb, root / rel[0])
    _save_png(frame.seg, root / rel[1])
    _save_png(encode_normals(to_nyu_axes(frame.normal)), root / rel[2])
    np.save(root / rel[3], np.ascontiguousarray(frame.depth, dtype="<f4"), allow_pickle=False)
    return rel


def _check_out_free(out: Path) -> None:
    """Refuse to touch an existing non-empty directory (or a file) at the output path."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output path {str(out)!r} exists and is not an empty directory")


def write_nyuv2(out: Path | str, n_train: int, n_test: int, height: int, width: int, seed: int) -> Path:
    """Render a train and a test split into ``out`` in the AdaShare NYU-v2 layout and return ``out``.

    Files are written to a hidden sibling directory that is renamed to ``out`` only when complete, so a
    crash never leaves a half-written dataset behind.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test), ("height", height), ("width", width)):
        _check_positive_int(name, value)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out)
    _check_out_free(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for sub in ("img", "seg", "normal_mask", "depth"):
            (tmp / sub).mkdir()
        digits = max(4, len(str(n_train + n_test - 1)))
        train_seq, test_seq = np.random.SeedSequence(int(seed)).spawn(2)
        listing: dict[str, list[list[str]]] = {"train": [], "test": []}
        splits = (("train", train_seq, n_train, 0), ("test", test_seq, n_test, n_train))
        for split, seq, count, start in splits:
            for j, child in enumerate(seq.spawn(count)):
                frame = render_frame(np.random.default_rng(child), height, width)
                listing[split].append(_write_frame(tmp, f"{start + j:0{digits}d}", frame))
        (tmp / JSON_NAME).write_text(json.dumps(listing, indent=2) + "\n", encoding="utf-8")
        _check_out_free(out)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ------------------------------------------------------------------------------ Tiny-Taskonomy output
#
# write_taskonomy renders the same frames as write_nyuv2 (same seed → same rooms) and writes them in the
# AdaShare Tiny-Taskonomy layout read by datasets/taskonomy.py; the encodings are documented there.

TASKONOMY_JSON_NAME = "taskonomy.json"
TASKONOMY_PRIOR_NAME = "semseg_prior_factor.npy"
TASKONOMY_BUILDING = "synth"
TASKONOMY_DOMAINS = ("rgb", "segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")
# Taskonomy's semantic classes as stored in its PNGs: 0 = uncertain / unlabeled, 1 = background and 16 COCO
# indoor object classes (StanfordVL/taskonomy taskbank).
TASKONOMY_CLASSES: tuple[str, ...] = (
    "uncertain",
    "background",
    "bottle",
    "chair",
    "couch",
    "potted_plant",
    "bed",
    "dining_table",
    "toilet",
    "tv",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
)
# NYU-40 classes of the renderer that have a COCO counterpart; every other NYU class (walls, floor, furniture
# COCO does not name, wall items) is "background", and unlabeled (255) is "uncertain". Pillows go with beds,
# desks with tables and the small spherical "otherprop" on supports with vases, as COCO annotators would.
NYU40_TO_TASKONOMY: dict[str, str] = {
    "chair": "chair",
    "sofa": "couch",
    "bed": "bed",
    "pillow": "bed",
    "table": "dining_table",
    "desk": "dining_table",
    "toilet": "toilet",
    "television": "tv",
    "sink": "sink",
    "refridgerator": "refrigerator",
    "books": "book",
    "otherprop": "vase",
}
_TASKONOMY_LUT = np.full(256, TASKONOMY_CLASSES.index("background"), dtype=np.uint8)
_TASKONOMY_LUT[IGNORE_LABEL] = TASKONOMY_CLASSES.index("uncertain")
for _nyu, _tk in NYU40_TO_TASKONOMY.items():
    _TASKONOMY_LUT[CLASS_ID[_nyu]] = TASKONOMY_CLASSES.index(_tk)
TASKONOMY_DEPTH_UNITS = 512.0  # file value per metre
TASKONOMY_DEPTH_INVALID = 65535
TASKONOMY_NORMAL_INVALID = 127
EDGE_UNIT = 5243  # file value of a unit luminance step (= 0.08 · 2¹⁶, the loader's clip)
KEYPOINT_MAX = 328  # file value of the strongest corner of a frame (≈ 0.005 · 2¹⁶, the loader's clip)
_KEYPOINT_FLOOR = 0.05  # corner responses below this fraction of the frame's strongest one are 0
_HARRIS_K = 0.05
_PRIOR_C = 1.12  # inverse-log weighting constant: weights lie in (1/log(2.12), 1/log(1.12)] = (1.33, 8.82]


def frame_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that renders frame ``index`` of ``split`` in write_nyuv2 and write_taskonomy.

    Child ``index`` of child ``0`` (train) or ``1`` (test) of ``SeedSequence(seed)``, built directly.
    """
    key = {"train": 0, "test": 1}[split]
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(key, index)))


def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel derivatives (x, y) of a (H, W) map, replicated borders, divided by 4 (unit step → 1)."""
    p = np.pad(img, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx / 4.0, gy / 4.0


def _box3(img: np.ndarray) -> np.ndarray:
    """3x3 box sum with replicated borders."""
    p = np.pad(img, 1, mode="edge")
    h, w = img.shape
    return sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an 8-bit RGB image, in [0, 1]."""
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0


def _mark_pairs(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Both pixels of every horizontal (dx, (H, W-1)) and vertical (dy, (H-1, W)) neighbour pair marked."""
    edge = np.zeros((dy.shape[0] + 1, dx.shape[1] + 1), dtype=bool)
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge


def taskonomy_edges(frame: Frame) -> np.ndarray:
    """16-bit texture/occlusion edge map: max of the Sobel magnitude of the luminance (albedo pattern,
    shading, class colours) and 0.5 on both sides of every NYU-40 label boundary (object outlines, so
    occlusion edges too); a unit luminance step → EDGE_UNIT.

    Typical texture and class edges (luminance steps 0.05-0.5) land in 0..5243, the loader's clip range.
    """
    gx, gy = _sobel(_luminance(frame.rgb))
    strength = np.hypot(gx, gy)
    seg = frame.seg
    boundary = _mark_pairs(seg[:, 1:] != seg[:, :-1], seg[1:, :] != seg[:-1, :])
    strength = np.where(boundary, np.maximum(strength, 0.5), strength)
    return np.clip(np.rint(strength * EDGE_UNIT), 0, 65535).astype(np.uint16)


def taskonomy_keypoints(frame: Frame) -> np.ndarray:
    """16-bit corner heat map: positive Harris response of the luminance, relative to the frame's strongest
    corner, with responses below 5% set to 0 (so most pixels are 0) and the peak at KEYPOINT_MAX."""
    gx, gy = _sobel(_luminance(frame.rgb))
    sxx, syy, sxy = _box3(gx * gx), _box3(gy * gy), _box3(gx * gy)
    response = sxx * syy - sxy * sxy - _HARRIS_K * (sxx + syy) ** 2
    peak = float(response.max())
    if peak <= 0:
        return np.zeros(response.shape, dtype=np.uint16)
    rel = np.clip((response / peak - _KEYPOINT_FLOOR) / (1 - _KEYPOINT_FLOOR), 0.0, 1.0)
    return np.rint(rel * KEYPOINT_MAX).astype(np.uint16)


def taskonomy_depth(frame: Frame) -> np.ndarray:
    """z-depth in Taskonomy units (round(d · 512), at most 65534), 65535 where the frame's normal is invalid
    (windows, mirrors and the far side of occlusion boundaries), so the loader's depth mask equals the
    renderer's normal mask."""
    units = np.clip(np.rint(frame.depth.astype(np.float64) * TASKONOMY_DEPTH_UNITS), 0, 65534)
    units[np.isnan(frame.normal).any(axis=-1)] = TASKONOMY_DEPTH_INVALID
    return units.astype(np.uint16)


def taskonomy_normals(frame: Frame) -> np.ndarray:
    """8-bit RGB of the unit camera-frame normal (R = x right, G = y down, B = z forward, so surfaces facing
    the camera have B < 128): round((n + 1) / 2 · 255); invalid pixels are (127, 127, 127)."""
    normal = frame.normal.astype(np.float64)
    invalid = np.isnan(normal).any(axis=-1)
    encoded = np.clip(np.rint((np.nan_to_num(normal) + 1.0) / 2.0 * 255.0), 0, 255).astype(np.uint8)
    encoded[invalid] = TASKONOMY_NORMAL_INVALID
    return encoded


def taskonomy_seg(frame: Frame) -> np.ndarray:
    """Taskonomy class ids 0..17 of the frame's NYU-40 labels (see NYU40_TO_TASKONOMY)."""
    return _TASKONOMY_LUT[frame.seg]


def taskonomy_prior_factor(counts: np.ndarray) -> np.ndarray:
    """Inverse-log class-frequency weights 1 / log(1.12 + p_c) over labelled pixels (ENet's scheme with a
    larger constant, so the weights stay in (1.33, 8.82] like the real file's 0.54..9.18); float32 (17,)."""
    counts = np.asarray(counts, dtype=np.float64)
    freq = counts / counts.sum() if counts.sum() > 0 else np.zeros_like(counts)
    return (1.0 / np.log(_PRIOR_C + freq)).astype(np.float32)


def write_taskonomy(out: Path | str, n_train: int, n_test: int, height: int, width: int, seed: int) -> Path:
    """Render a train and a test split into ``out`` in the AdaShare Tiny-Taskonomy layout and return ``out``.

    Frame ``i`` of a split is rendered from :func:`frame_rng` ``(seed, split, i)``: the rooms are those of
    ``write_nyuv2`` with the same seed. Listing paths are ``<building>/<domain>/point_<p>_view_0_domain_
    <domain>.png`` under ``train/`` or ``test/``, building ``synth``, with ``p`` counting train frames from 0
    and test frames from ``n_train``. ``semseg_prior_factor.npy`` holds :func:`taskonomy_prior_factor` of the
    train split's label counts. Written to a hidden sibling directory renamed to ``out`` when complete.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test), ("height", height), ("width", width)):
        _check_positive_int(name, value)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out)
    _check_out_free(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        listing: dict[str, list[list[str]]] = {"train": [], "test": []}
        counts = np.zeros(len(TASKONOMY_CLASSES), dtype=np.int64)
        for split, count, start in (("train", n_train, 0), ("test", n_test, n_train)):
            for domain in TASKONOMY_DOMAINS:
                (tmp / split / TASKONOMY_BUILDING / domain).mkdir(parents=True)
            for j in range(count):
                frame = render_frame(frame_rng(seed, split, j), height, width)
                seg = taskonomy_seg(frame)
                if split == "train":
                    counts += np.bincount(seg.ravel(), minlength=len(TASKONOMY_CLASSES))
                arrays = (
                    frame.rgb,
                    seg,
                    taskonomy_normals(frame),
                    taskonomy_depth(frame),
                    taskonomy_keypoints(frame),
                    taskonomy_edges(frame),
                )
                rel = [
                    f"{TASKONOMY_BUILDING}/{d}/point_{start + j}_view_0_domain_{d}.png"
                    for d in TASKONOMY_DOMAINS
                ]
                for array, path in zip(arrays, rel, strict=True):
                    _save_png(array, tmp / split / path)
                listing[split].append(rel)
        np.save(tmp / TASKONOMY_PRIOR_NAME, taskonomy_prior_factor(counts[1:]), allow_pickle=False)
        (tmp / TASKONOMY_JSON_NAME).write_text(json.dumps(listing, indent=2) + "\n", encoding="utf-8")
        _check_out_free(out)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
