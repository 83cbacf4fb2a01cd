"""Procedural synthetic laparoscopic video: jaxsurg's embedded default dataset.

``render_clip(seed, num_frames, height, width)`` draws one short clip, deterministically
from ``seed`` (``np.random.default_rng``; no global random state), together with exact
ground truth for every frame: binary, part and type masks in the EndoVis 2017
conventions, the forward optical flow t -> t+1 with its valid mask, and instrument key
points. The images fool no surgeon, but they carry every cue the jaxsurg methods rely on:

* colour: reddish, saturated tissue (multi-octave noise, folds, vessels, pale fat and
  membrane patches, wet specular highlights) against grey, low-saturation metal that is
  slightly tinted, self-shaded, casts shadows and is sometimes smeared with blood;
* motion: the tissue follows one smooth camera motion per clip (translation, zoom, a
  little roll); each instrument moves rigidly on its own smooth trajectory with
  occasional fast moves, and its jaws open and close;
* objectness: one to three compact instruments (shaft from the image border, wrist, two
  jaws), of seven types with distinct clasper shapes, occluding each other by depth;
* an endoscope's dark circular border, mild blur and sensor noise.

Scene model and exact flow
--------------------------
Every pixel shows one *layer*: the tissue plane or one rigid part of an instrument (its
body = shaft + wrist, its left jaw, its right jaw). Each layer has canonical coordinates
and, per frame t, an affine map ``F_t`` from canonical to image pixel coordinates (the
camera for the tissue; a rotation + translation for an instrument; for a jaw, that
instrument's map composed with the jaw's rotation about the wrist joint). A layer is
drawn by inverse-mapping pixel centres into its canonical texture or sprite, so the
forward flow at pixel p is exactly ``F_{t+1}(F_t^{-1}(p)) - p`` for the topmost layer at p.

Conventions: pixel (x, y) is column x, row y, with its centre at integer coordinates;
flow and key points are in pixels. Image brightness at a pixel is exactly constant
along the flow only up to resampling, anti-aliased edges and blur when
``specular=False``; tissue highlights (which slide with the light), cast shadows, the
radial illumination fall-off and noise are extra, honest violations when
``specular=True``.

Run ``python -m jaxsurg.data.synthetic --seed 0 --frames 8 --out /tmp/synth.png`` for a
contact sheet (rows: frames; columns: image with key points, parts overlay, type
overlay, colour-coded flow with invalid pixels black).
"""

from __future__ import annotations

import argparse
import dataclasses

import cv2
import numpy as np

from jaxsurg.data import flow as flow_lib

INSTRUMENT_TYPES: tuple[str, ...] = (
    "Bipolar Forceps",
    "Prograsp Forceps",
    "Large Needle Driver",
    "Vessel Sealer",
    "Grasping Retractor",
    "Monopolar Curved Scissors",
    "Other",
)
PART_NAMES = ("background", "shaft", "wrist", "claspers")
KEYPOINT_NAMES = ("LeftClasper", "RightClasper", "Head", "ShaftEnd")

_SHAFT, _WRIST, _CLASPERS = 1, 2, 3
_BODY, _JAW_LEFT, _JAW_RIGHT = 0, 1, 2  # the rigid layers of one instrument, bottom to top: jaws, body
_LAYERS_PER_INSTRUMENT = 3
_SUPERSAMPLE = 4  # sprite anti-aliasing: samples per pixel along each axis


@dataclasses.dataclass(frozen=True)
class _ToolShape:
    """Sizes (fractions of an instrument's scale, 1.35-1.7 image widths), jaw opening
    (radians) and greys in [0, 1] of one instrument type."""

    shaft_radius: float
    wrist_radius: float
    wrist_length: float
    jaw_length: float
    jaw_base: float  # width of one jaw at the joint
    jaw_tip: float  # width of one jaw at its tip
    jaw_curve: float  # sideways bend of the jaws at the tip, fraction of jaw length
    max_opening: float  # angle between the two jaws when fully open
    fenestrated: bool = False
    serrated: bool = False
    shaft_grey: float = 0.55
    wrist_grey: float = 0.68
    jaw_grey: float = 0.75


_TOOL_SHAPES = {  # EndoVis 2017 type id -> shape
    1: _ToolShape(0.038, 0.034, 0.070, 0.105, 0.017, 0.006, 0.22, 0.90, serrated=True),  # slender, curved (Maryland)
    2: _ToolShape(0.040, 0.036, 0.080, 0.120, 0.024, 0.017, 0.0, 0.80, fenestrated=True),  # windowed jaws
    3: _ToolShape(0.040, 0.036, 0.070, 0.075, 0.027, 0.021, 0.0, 0.55, serrated=True),  # short, blunt, toothed
    4: _ToolShape(0.045, 0.046, 0.060, 0.140, 0.026, 0.022, 0.04, 0.45, wrist_grey=0.5),  # long, wide, bulky wrist
    5: _ToolShape(0.036, 0.032, 0.090, 0.160, 0.010, 0.021, 0.0, 1.00),  # long paddles, wide opening
    # pointed, curved blades and a dark tip cover
    6: _ToolShape(0.038, 0.034, 0.060, 0.085, 0.022, 0.002, 0.35, 0.70, wrist_grey=0.22),
    # a dark probe with short, rounded claspers
    7: _ToolShape(0.042, 0.042, 0.035, 0.055, 0.030, 0.028, 0.0, 0.25, shaft_grey=0.3, wrist_grey=0.35, jaw_grey=0.55),
}


@dataclasses.dataclass
class _Sprite:
    """Premultiplied RGBA (h, w, 4) float32; pixel (col j, row i) is canonical (j + u0, i + v0)."""

    rgba: np.ndarray
    u0: int
    v0: int


@dataclasses.dataclass
class _Instrument:
    type_id: int
    sprites: tuple[_Sprite, _Sprite, _Sprite]  # body, left jaw, right jaw
    wrist_start: float  # canonical u where the shaft ends and the wrist begins (pixels)
    shaft_length: float  # pixels from the wrist joint to the far end of the shaft
    tips: np.ndarray  # (2, 2) left / right jaw tip in the jaw's own coordinates
    pose: np.ndarray  # (T, 3) head x, y (pixels) and shaft angle (radians)
    opening: np.ndarray  # (T,) angle between the jaws (radians)

    def transforms(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Canonical -> image maps (3, 3) of the body, left jaw and right jaw at frame t."""
        x, y, angle = self.pose[t]
        half = 0.5 * self.opening[t]
        return _rigid(x, y, angle), _rigid(x, y, angle - half), _rigid(x, y, angle + half)


# ----------------------------------------------------------------------------- helpers


def _rigid(x: float, y: float, angle: float) -> np.ndarray:
    """3x3 map rotating by ``angle`` (radians, image axes) then translating by (x, y)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, x], [s, c, y], [0.0, 0.0, 1.0]])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std float32 noise of ``shape`` with features about ``scale`` pixels wide.

    White noise on a grid of spacing scale/4 is Gaussian-blurred there and then upsampled
    (bicubic), which keeps the field and its slopes free of grid-aligned streaks.
    """
    h, w = shape
    step = max(scale / 4, 1.0)
    grid = rng.standard_normal((int(h / step) + 8, int(w / step) + 8)).astype(np.float32)
    grid = cv2.GaussianBlur(grid, (0, 0), 1.5 * scale / (4 * step))
    size = (int(np.ceil(grid.shape[1] * step)), int(np.ceil(grid.shape[0] * step)))
    noise = cv2.resize(grid, size, interpolation=cv2.INTER_CUBIC)[:h, :w]
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def _sinusoids(
    rng: np.random.Generator, num_frames: int, max_speed: float, freqs: tuple[float, float], dims: int
) -> np.ndarray:
    """(T, dims) sum of two random sinusoids per dimension whose speed stays below ``max_speed``/frame."""
    t = np.arange(num_frames)[:, None]
    out = np.zeros((num_frames, dims))
    for _ in range(2):
        f = rng.uniform(*freqs, size=dims)
        amp = rng.uniform(0.2, 0.5, size=dims) * max_speed / (2 * np.pi * f)
        out += amp * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi, size=dims))
    return out


def _fast_moves(rng: np.random.Generator, num_frames: int, magnitude: float, dims: int) -> np.ndarray:
    """(T, dims) offsets that now and then (5 % of frames) jump, within 2-4 frames, to a
    new random target in [-magnitude, magnitude] per axis, so they stay bounded."""
    out = np.zeros((num_frames, dims))
    offset = np.zeros(dims)
    t = 0
    while t < num_frames:
        if rng.random() < 0.05:
            duration = int(rng.integers(2, 5))
            target = rng.uniform(-magnitude, magnitude, size=dims)
            ramp = _smoothstep(np.arange(1, duration + 1) / duration)[:, None]
            steps = offset + ramp * (target - offset)
            out[t : t + duration] = steps[: num_frames - t]
            offset, t = target, t + duration
        else:
            out[t], t = offset, t + 1
    return out


# ------------------------------------------------------------------------------ tissue


def _camera(rng: np.random.Generator, num_frames: int, height: int, width: int) -> tuple[np.ndarray, float]:
    """(T, 3, 3) maps from tissue coordinates to image pixels (pan, zoom, roll) and the
    radius (pixels) around the tissue origin that the camera can ever see, whatever T."""
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    pan_speed, zoom_speed, freqs = 2.5 * width / 320, 0.012, (0.01, 0.04)
    pan = _sinusoids(rng, num_frames, pan_speed, freqs, 2)
    log_zoom = _sinusoids(rng, num_frames, zoom_speed, freqs, 1)[:, 0]
    roll = _sinusoids(rng, num_frames, 0.006, freqs, 1)[:, 0]
    maps = []
    for t in range(num_frames):
        view = _rigid(centre[0], centre[1], roll[t])
        view[:2, :2] *= np.exp(log_zoom[t])
        maps.append(view @ _rigid(-pan[t, 0], -pan[t, 1], 0.0))
    bound = lambda speed: speed / (2 * np.pi * freqs[0])  # noqa: E731  (see _sinusoids)
    reach = np.hypot(*centre) * np.exp(bound(zoom_speed)) + np.sqrt(2) * bound(pan_speed)
    return np.stack(maps), float(reach)


def _tissue_texture(rng: np.random.Generator, shape: tuple[int, int], width: int) -> np.ndarray:
    """(h, w, 6) float32 tissue texture: RGB in [0, 1], surface slope (gx, gy), wetness in [0, 1]."""
    noise = lambda scale: _smooth_noise(rng, shape, scale * width)  # noqa: E731
    big, mid, small = noise(0.3), noise(0.1), noise(0.035)
    pink, red = np.array([0.90, 0.52, 0.50], np.float32), np.array([0.68, 0.18, 0.16], np.float32)
    redness = 1 / (1 + np.exp(-(1.4 * big + 0.7 * noise(0.08) + 0.3)))
    rgb = pink + (red - pink) * redness[..., None]
    rgb *= 1 + 0.03 * noise(0.01)[..., None]
    fat = _smoothstep((noise(0.15) + 0.3 * small - 1.0) / 0.6)[..., None]
    rgb += (np.array([0.90, 0.80, 0.64], np.float32) - rgb) * 0.85 * fat
    membrane = _smoothstep((noise(0.2) - 0.2) / 1.2)[..., None]
    rgb += (np.array([0.80, 0.75, 0.74], np.float32) - rgb) * 0.7 * membrane
    fascia = _smoothstep((noise(0.12) + 0.6 * small - 1.5) / 0.6)[..., None]
    rgb += (np.array([0.84, 0.79, 0.77], np.float32) - rgb) * 0.85 * fascia
    fold = np.exp(-((noise(0.15) / 0.3) ** 2))[..., None]
    rgb *= 1 - 0.25 * fold * np.array([0.7, 1.0, 1.0], np.float32)
    rgb = _draw_vessels(rng, rgb, width)
    shading = np.stack(np.gradient(big + 0.5 * mid + 0.2 * small)[::-1], -1)
    shading /= shading.std() + 1e-6
    rgb *= np.clip(0.9 - 0.06 * shading[..., 0] - 0.08 * shading[..., 1], 0.6, 1.05)[..., None]
    slope = np.stack(np.gradient(mid)[::-1], -1)
    slope /= slope.std() + 1e-6
    wet = _smoothstep((noise(0.2) - 0.5) / 0.8)[..., None]
    return np.concatenate([np.clip(rgb, 0, 1), slope, wet], -1).astype(np.float32)


def _draw_vessels(rng: np.random.Generator, rgb: np.ndarray, width: int) -> np.ndarray:
    """Darkens ``rgb`` along a few random smooth curves (vessels), thick and thin."""
    h, w = rgb.shape[:2]
    ink = np.zeros((h, w), np.float32)
    step = 3.0 * width / 320
    image_areas = h * w / (0.8 * width**2)
    for _ in range(int(rng.integers(3, 7) * image_areas)):
        n = int(rng.integers(30, 90))
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.12, n))
        start = rng.uniform([0, 0], [w, h])
        pts = start + np.cumsum(step * np.stack([np.cos(heading), np.sin(heading)], -1), 0)
        thickness = max(1, int(rng.uniform(0.25, 1.0) * 5 * width / 320))
        strength = float(rng.uniform(0.3, 0.7))
        cv2.polylines(ink, [np.round(pts * 16).astype(np.int32)], False, strength, thickness, cv2.LINE_AA, shift=4)
    ink = cv2.GaussianBlur(ink, (0, 0), 1.2 * width / 320)[..., None]
    vessel = np.array([0.50, 0.08, 0.16], np.float32)
    return rgb + (vessel - rgb) * np.clip(ink, 0, 1)


# ---------------------------------------------------------------------------- sprites


def _sprite(extent: tuple[int, int, int, int], paint) -> _Sprite:
    """Renders ``paint(u, v) -> (inside bool, rgb)`` over integer canonical bounds
    (u_min, u_max, v_min, v_max), supersampled and area-averaged into a premultiplied sprite."""
    u_min, u_max, v_min, v_max = extent
    k = _SUPERSAMPLE
    u = u_min - 0.5 + (np.arange((u_max - u_min + 1) * k) + 0.5) / k
    v = v_min - 0.5 + (np.arange((v_max - v_min + 1) * k) + 0.5) / k
    inside, rgb = paint(*np.meshgrid(u.astype(np.float32), v.astype(np.float32)))
    alpha = inside.astype(np.float32)[..., None]
    rgba = np.concatenate([np.clip(rgb, 0, 1) * alpha, alpha], -1).astype(np.float32)
    small = cv2.resize(rgba, (u_max - u_min + 1, v_max - v_min + 1), interpolation=cv2.INTER_AREA)
    return _Sprite(small, u_min, v_min)


def _metal(grey, across: np.ndarray, tint: np.ndarray) -> np.ndarray:
    """RGB of a metal cylinder of brightness ``grey`` (scalar or array like ``across``);
    ``across`` in [-1, 1] runs across its width; lit from one side."""
    bulge = np.sqrt(np.clip(1 - across**2, 0, 1))
    shade = grey * (0.4 + 0.6 * bulge) + 0.35 * np.exp(-(((across + 0.35) / 0.14) ** 2))
    return shade[..., None] * tint


def _bloody(rgb: np.ndarray, u: np.ndarray, v: np.ndarray, blobs: np.ndarray) -> np.ndarray:
    """``rgb`` under an irregular blood smear made of blobs (n, 3): centre u, v and radius."""
    if not len(blobs):
        return rgb
    level = np.zeros_like(u)
    for cu, cv, r in blobs:
        du, dv = (u - cu) / r, (v - cv) / r
        ragged = 1 + 0.35 * np.sin(2.3 * du + 1.1 * dv + r) * np.cos(1.7 * dv - 0.8 * du)
        level += np.exp(-(du**2 + dv**2) * ragged)
    opacity = 0.75 * _smoothstep((level - 0.45) / 0.2)[..., None]
    return rgb + (np.array([0.50, 0.08, 0.07], np.float32) - rgb) * opacity


def _body_sprite(
    shape: _ToolShape, unit: float, length: float, tint: np.ndarray, smear: np.ndarray
) -> tuple[_Sprite, float]:
    """Sprite of shaft + wrist (joint at the origin, shaft along -u) and the wrist start u."""
    rs, rw, lw = shape.shaft_radius * unit, shape.wrist_radius * unit, shape.wrist_length * unit
    front, corner = 0.45 * rw, 0.6 * rw

    def paint(u, v):
        shaft = (u <= -lw) & (u >= -length) & (np.abs(v) <= rs)
        cu, cv = np.maximum(u - (front - corner), 0), np.maximum(np.abs(v) - (rw - corner), 0)
        wrist = (u > -lw) & (u <= front) & (np.abs(v) <= rw) & (cu**2 + cv**2 <= corner**2)
        radius = np.where(shaft, rs, rw)
        grey = np.where(shaft, shape.shaft_grey, shape.wrist_grey)
        rgb = _metal(grey, v / radius, tint)
        band = shaft & (u > -lw - 0.8 * rs) & (u < -lw - 0.4 * rs)
        grooves = wrist & (np.minimum(np.abs(u + 0.35 * lw), np.abs(u + 0.7 * lw)) < 0.6)
        pin = u**2 + v**2 < (0.25 * rw) ** 2
        rgb *= np.where(band | grooves | pin, 0.45, 1.0)[..., None]
        brushed = 1 + 0.04 * np.sin(5.0 * v + 0.05 * u) * shaft
        return shaft | wrist, _bloody(rgb * brushed[..., None], u, v, smear)

    half = int(np.ceil(max(rs, rw))) + 1
    return _sprite((-int(np.ceil(length)) - 1, int(np.ceil(front)) + 1, -half, half), paint), -lw


def _jaw_profile(shape: _ToolShape, unit: float, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre line c(a) and width w(a) of a jaw at distance ``a`` (pixels) from the joint."""
    length = shape.jaw_length * unit
    x = np.clip(a / length, 0, 1)
    centre = shape.jaw_curve * length * x**2
    tip_radius = max(shape.jaw_tip * unit, 1.0)
    from_tip = np.clip((a - (length - tip_radius)) / tip_radius, 0, 1)
    width = (shape.jaw_base + (shape.jaw_tip - shape.jaw_base) * x) * unit * np.sqrt(1 - from_tip**2)
    return centre, width


def _jaw_sprite(
    shape: _ToolShape, unit: float, side: int, tint: np.ndarray, smear: np.ndarray
) -> tuple[_Sprite, np.ndarray]:
    """Sprite of one jaw (``side`` -1 left, +1 right) in its own coordinates (joint at the
    origin, jaw along +a) and its tip key point (a, b)."""
    length, base = shape.jaw_length * unit, shape.jaw_base * unit

    def paint(a, b):
        centre, width = _jaw_profile(shape, unit, a)
        across = side * (b - centre)
        inside = (a >= -0.5 * base) & (a <= length) & (across >= 0) & (across <= np.maximum(width, 1e-3))
        rel = across / np.maximum(width, 1e-3)
        if shape.fenestrated:
            inside &= ~((a > 0.3 * length) & (a < 0.78 * length) & (rel > 0.3) & (rel < 0.72))
        rgb = _metal(shape.jaw_grey, 2 * rel - 1, tint)
        if shape.serrated:
            teeth = (rel < 0.3) & (np.sin(2 * np.pi * a / max(2.0, 0.012 * unit)) > 0)
            rgb *= np.where(teeth, 0.6, 1.0)[..., None]
        return inside, _bloody(rgb, a, side * b, smear)

    reach = int(np.ceil(length + abs(shape.jaw_curve) * length + max(base, shape.jaw_tip * unit))) + 2
    sprite = _sprite((-int(base) - 2, int(np.ceil(length)) + 2, -reach, reach), paint)
    tip_a = length - max(1.0, 0.5 * shape.jaw_tip * unit)
    centre, width = _jaw_profile(shape, unit, np.array(tip_a))
    return sprite, np.array([tip_a, centre + side * 0.5 * width])


# ------------------------------------------------------------------------ instruments

# Type frequencies: "Other" (a probe-like tool, background in the binary and parts tasks
# as in EndoVis 2017) is rare, as in EndoVis 2017; the six instrument types are equally likely.
_OTHER_PROBABILITY = 0.04
_TYPE_PROBABILITIES = np.array([(1 - _OTHER_PROBABILITY) / 6] * 6 + [_OTHER_PROBABILITY])


def _make_instrument(rng: np.random.Generator, entry: float, num_frames: int, height: int, width: int) -> _Instrument:
    """A random instrument whose shaft leaves the image in direction ``entry`` (radians)."""
    type_id = int(rng.choice(np.arange(1, len(INSTRUMENT_TYPES) + 1), p=_TYPE_PROBABILITIES))
    shape = _TOOL_SHAPES[type_id]
    unit = width * rng.uniform(1.35, 1.7)  # apparent size: the instrument's distance varies
    tint = (1 + rng.normal(0, 0.025, 3) + np.array([1, 0, -0.5]) * rng.uniform(0, 0.1)).astype(np.float32)
    smears = [np.zeros((0, 3))] * 3
    if rng.random() < 0.3:  # blood on the wrist or one of the jaws
        part = int(rng.integers(0, 3))
        n = int(rng.integers(2, 6))
        reach = shape.jaw_length if part else -shape.wrist_length
        centres = np.stack([rng.uniform(0.2, 0.9, n) * reach, rng.normal(0, 0.5, n) * shape.jaw_base], -1) * unit
        smears[part] = np.concatenate([centres, rng.uniform(0.008, 0.02, (n, 1)) * unit], -1)
    length = 1.3 * np.hypot(height, width)
    body, wrist_start = _body_sprite(shape, unit, length, tint, smears[0])
    left, left_tip = _jaw_sprite(shape, unit, -1, tint, smears[1])
    right, right_tip = _jaw_sprite(shape, unit, 1, tint, smears[2])
    pose, opening = _trajectory(rng, shape, entry, num_frames, height, width)  # draws last: T-dependent
    tips = np.stack([left_tip, right_tip])
    return _Instrument(type_id, (body, left, right), wrist_start, length, tips, pose, opening)


def _trajectory(rng: np.random.Generator, shape: _ToolShape, entry: float, num_frames: int, height: int, width: int):
    """(T, 3) head x, y (pixels) and shaft angle (radians); (T,) jaw opening (radians).

    The head wanders smoothly, with occasional fast moves, on the ``entry`` side of the
    image; the shaft points from a pivot (the port) outside the image on that side to
    the head, swaying a little, so the instrument turns about its port as in laparoscopy.
    """
    unit = width / 320
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    outward = np.array([np.cos(entry), np.sin(entry)])
    port_angle = entry + rng.uniform(-0.4, 0.4)
    port = centre + rng.uniform(0.9, 1.4) * width * np.array([np.cos(port_angle), np.sin(port_angle)])
    head = centre + rng.uniform(0.05, 0.3) * width * outward
    sway = _sinusoids(rng, num_frames, 0.02, (0.015, 0.05), 1)[:, 0]
    t = np.arange(num_frames)
    cycle = 0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(0.02, 0.08) * t + rng.uniform(0, 2 * np.pi))
    opening = shape.max_opening * rng.uniform(0.5, 1.0) * cycle
    wander = _sinusoids(rng, num_frames, 4.0 * unit, (0.015, 0.05), 2)
    wander += _fast_moves(rng, num_frames, 0.08 * width, 2)  # last: how many numbers it draws depends on T
    bound = np.array([0.38 * width, 0.36 * height])
    xy = centre + bound * np.tanh((head - centre + wander) / bound)
    from_port = xy - port
    angle = np.arctan2(from_port[:, 1], from_port[:, 0]) + sway
    return np.concatenate([xy, angle[:, None]], -1), opening


# ---------------------------------------------------------------------------- frames


@dataclasses.dataclass
class _Scene:
    height: int
    width: int
    camera: np.ndarray  # (T, 3, 3) tissue texture -> image maps
    texture: np.ndarray  # (h, w, 6) see _tissue_texture
    instruments: list[_Instrument]  # in slot order
    depth_order: list[int]  # slots, bottom to top
    radius: float  # endoscope circle radius (pixels); masks are 0 outside it
    edge: float  # width of its soft dark edge (pixels), centred on ``radius``
    light: list[list[float]]  # (T, 2) drift of the tissue highlights
    shadow_offset: np.ndarray  # (2,) pixels
    specular: bool

    def layer_maps(self, t: int) -> list[np.ndarray]:
        """Canonical -> image (3, 3) maps of all layers at frame t, index = layer id."""
        maps = [self.camera[t]]
        for inst in self.instruments:
            maps.extend(inst.transforms(t))
        return maps


def _layer_id(slot: int, part: int) -> int:
    return 1 + _LAYERS_PER_INSTRUMENT * slot + part


@dataclasses.dataclass
class _Grid:
    """Per-clip pixel-wise constants, (H, W) float32 / bool."""

    xs: np.ndarray  # pixel x
    ys: np.ndarray  # pixel y
    in_view: np.ndarray  # inside the endoscope circle: where masks may be non-zero
    inner: np.ndarray  # inside its fully lit part: where flow may be valid
    lighting: np.ndarray  # (H, W, 1) dark border and, with specular, radial fall-off

    @classmethod
    def make(cls, scene: _Scene) -> "_Grid":
        xs, ys = np.meshgrid(np.arange(scene.width, dtype=np.float32), np.arange(scene.height, dtype=np.float32))
        radius = np.hypot(xs - (scene.width - 1) / 2, ys - (scene.height - 1) / 2)
        lighting = _smoothstep((scene.radius + 0.5 * scene.edge - radius) / scene.edge)
        if scene.specular:
            lighting *= 1 - 0.3 * (radius / scene.radius) ** 2
        inner = radius <= scene.radius - 0.5 * scene.edge
        return cls(xs, ys, radius <= scene.radius, inner, lighting[..., None])


def _warp(src: np.ndarray, image_from_src: np.ndarray, height: int, width: int) -> np.ndarray:
    """Samples ``src`` (bilinear, zero outside) at the inverse image of every pixel."""
    src_from_image = np.linalg.inv(image_from_src)[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(src, src_from_image, (width, height), flags=flags, borderMode=cv2.BORDER_CONSTANT)


def _warp_sprite(sprite: _Sprite, image_from_canonical: np.ndarray, height: int, width: int):
    """Warps ``sprite`` into its bounding box in the image: returns the box as a pair of
    slices (rows, columns) and the RGBA patch, or None where it misses the image."""
    image_from_sprite = image_from_canonical @ _rigid(sprite.u0, sprite.v0, 0.0)
    sh, sw = sprite.rgba.shape[:2]
    corners = image_from_sprite[:2] @ np.array([[-1, sw, -1, sw], [-1, -1, sh, sh], [1, 1, 1, 1]], float)
    x0, y0 = np.maximum(np.floor(corners.min(1)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(1)).astype(int) + 1, [width, height])
    if x0 >= x1 or y0 >= y1:
        return None
    patch = _warp(sprite.rgba, _rigid(-x0, -y0, 0.0) @ image_from_sprite, y1 - y0, x1 - x0)
    return (slice(y0, y1), slice(x0, x1)), patch


def _tissue_rgb(scene: _Scene, grid: _Grid, t: int) -> np.ndarray:
    """(H, W, 3) tissue colour at frame t, with highlights that slide with the light."""
    tex = _warp(scene.texture, scene.camera[t], scene.height, scene.width)
    rgb = np.ascontiguousarray(tex[..., :3])
    if scene.specular:
        view_x = grid.xs * (1.6 / scene.width) + (scene.light[t][0] - 0.8)
        view_y = grid.ys * (1.6 / scene.height) + (scene.light[t][1] - 0.8)
        glint = np.exp(((tex[..., 3] - view_x) ** 2 + (tex[..., 4] - view_y) ** 2) * (-0.5 / 0.3**2))
        glint = 0.9 * _smoothstep((glint * tex[..., 5] - 0.4) / 0.4)[..., None]
        rgb += (np.array([1.0, 0.97, 0.95], np.float32) - rgb) * glint
    return rgb


def _composite(scene: _Scene, grid: _Grid, t: int):
    """Frame t before optics: RGB (H, W, 3) float32, the id of the topmost layer (H, W)
    int16 and the part label (H, W) uint8 of the topmost layer (0 for the tissue)."""
    h, w = scene.height, scene.width
    rgb = _tissue_rgb(scene, grid, t)
    layers = np.zeros((h, w), np.int16)
    parts = np.zeros((h, w), np.uint8)
    maps = scene.layer_maps(t)
    for slot in scene.depth_order:
        inst = scene.instruments[slot]
        warped = [_warp_sprite(s, maps[_layer_id(slot, k)], h, w) for k, s in enumerate(inst.sprites)]
        if scene.specular:
            rgb *= 1 - 0.35 * _shadow(scene, [x for x in warped if x is not None])
        for part in (_JAW_LEFT, _JAW_RIGHT, _BODY):
            if warped[part] is None:
                continue
            box, patch = warped[part]
            rgb[box] *= 1 - patch[..., 3:]
            rgb[box] += patch[..., :3]
            covered = patch[..., 3] >= 0.5
            layers[box][covered] = _layer_id(slot, part)
            part_label = _CLASPERS
            if part == _BODY:
                u = np.linalg.inv(maps[_layer_id(slot, _BODY)])[0]
                wrist = u[0] * grid.xs[box] + u[1] * grid.ys[box] + u[2] >= inst.wrist_start
                part_label = np.where(wrist, _WRIST, _SHAFT)[covered]
            parts[box][covered] = part_label
    return rgb, layers, parts


def _shadow(scene: _Scene, warped: list) -> np.ndarray:
    """(H, W, 1) soft shadow that an instrument (its warped sprites) casts on what lies below."""
    silhouette = np.zeros((scene.height, scene.width), np.float32)
    for box, patch in warped:
        np.maximum(silhouette[box], patch[..., 3], out=silhouette[box])
    shift = np.float32([[1, 0, scene.shadow_offset[0]], [0, 1, scene.shadow_offset[1]]])
    shadow = cv2.warpAffine(silhouette, shift, (scene.width, scene.height))
    return cv2.GaussianBlur(shadow, (0, 0), 0.012 * scene.width)[..., None]


def _optics(scene: _Scene, grid: _Grid, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, illumination fall-off, the endoscope's dark border and sensor noise -> uint8."""
    rgb = cv2.GaussianBlur(rgb, (0, 0), 0.45 + 0.25 * scene.width / 320) * grid.lighting
    if scene.specular:
        rgb += _sensor_noise(rng, rgb.shape, 0.012)
    return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)


def _sensor_noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """Zero-mean float32 noise of standard deviation ``std``: the sum of two uniform random
    bytes (a triangular distribution), several times cheaper to draw than a Gaussian."""
    pair = np.frombuffer(rng.bytes(2 * int(np.prod(shape))), np.uint8).reshape(2, *shape)
    return (pair[0].astype(np.float32) + pair[1] - 255) * np.float32(std / np.sqrt(2 * (256**2 - 1) / 12))


def _flow(scene: _Scene, grid: _Grid, t: int, layers: np.ndarray, next_layers: np.ndarray):
    """Exact forward flow (H, W, 2) float32 of frame t and its valid mask (H, W) bool."""
    xs, ys, inner = grid.xs, grid.ys, grid.inner
    now, nxt = scene.layer_maps(t), scene.layer_maps(t + 1)
    motion = np.stack([(b @ np.linalg.inv(a))[:2] - np.eye(3)[:2] for a, b in zip(now, nxt)])
    coef = motion.reshape(len(now), 6).astype(np.float32)[layers]
    flow = np.stack([coef[..., 3 * i] * xs + coef[..., 3 * i + 1] * ys + coef[..., 3 * i + 2] for i in (0, 1)], -1)
    tx, ty = np.rint(xs + flow[..., 0]).astype(np.int64), np.rint(ys + flow[..., 1]).astype(np.int64)
    inside = (tx >= 0) & (tx < scene.width) & (ty >= 0) & (ty < scene.height)
    tx, ty = np.clip(tx, 0, scene.width - 1), np.clip(ty, 0, scene.height - 1)
    valid = inner & inside & inner[ty, tx] & (next_layers[ty, tx] == layers)
    return flow, valid


def _keypoints(scene: _Scene, grid: _Grid, t: int, layers: np.ndarray, slots: int):
    """(slots, 4, 2) float32 key points (x, y) and (slots, 4) bool visibility at frame t.

    A key point is visible when it lies in the endoscope view and its own layer (jaw for a
    tip, body for Head and ShaftEnd) covers a pixel of its 3x3 neighbourhood.
    """
    h, w, in_view = scene.height, scene.width, grid.in_view
    points = np.zeros((slots, 4, 2), np.float32)
    visible = np.zeros((slots, 4), bool)
    padded = np.pad(layers, 1, constant_values=-1)
    for slot, inst in enumerate(scene.instruments):
        body, left, right = inst.transforms(t)
        head = body[:2, 2]
        axis = -body[:2, 0]  # from the joint along the shaft
        s = np.arange(-inst.wrist_start, inst.shaft_length, 0.25)
        along = head + s[:, None] * axis
        ix, iy = np.rint(along[:, 0]).astype(int), np.rint(along[:, 1]).astype(int)
        ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        ok[ok] = in_view[iy[ok], ix[ok]]
        shaft_end = along[np.nonzero(ok)[0][-1]] if ok.any() else along[-1]
        pts = [left[:2, :2] @ inst.tips[0] + left[:2, 2], right[:2, :2] @ inst.tips[1] + right[:2, 2], head, shaft_end]
        owners = (_JAW_LEFT, _JAW_RIGHT, _BODY, _BODY)
        for k, (p, part) in enumerate(zip(pts, owners)):
            points[slot, k] = p
            x, y = int(np.rint(p[0])), int(np.rint(p[1]))
            if 0 <= x < w and 0 <= y < h and in_view[y, x]:
                visible[slot, k] = bool((padded[y : y + 3, x : x + 3] == _layer_id(slot, part)).any())
    return points, visible


# ------------------------------------------------------------------------------ public


def render_clip(
    seed: int,
    num_frames: int,
    height: int = 256,
    width: int = 320,
    *,
    max_instruments: int = 3,
    specular: bool = True,
) -> dict[str, np.ndarray]:
    """Renders one synthetic laparoscopic clip with exact ground truth.

    Args:
      seed: seeds ``np.random.default_rng``; the same arguments give identical arrays, and
        a longer clip from the same seed (same size) starts with the same frames.
      num_frames: T >= 1.
      height, width: frame size in pixels, each >= 32.
      max_instruments: 1..3; the clip shows between 1 and this many instruments.
      specular: False switches off what moves independently of the surfaces (tissue
        highlights, cast shadows, radial illumination fall-off) and the sensor noise,
        leaving only resampling, anti-aliasing and the blur to break brightness constancy.

    Returns:
      A dict of numpy arrays, T = num_frames, H = height, W = width, N = max_instruments:

      - ``image``: uint8 (T, H, W, 3) RGB in [0, 255].
      - ``mask_binary``: uint8 (T, H, W), 1 on any instrument ("Other" included), else 0.
      - ``mask_parts``: uint8 (T, H, W), 0 background, 1 shaft, 2 wrist, 3 claspers.
      - ``mask_type``: uint8 (T, H, W), 0 background, else the EndoVis 2017 type id 1..7
        (``INSTRUMENT_TYPES[id - 1]``). All masks are 0 outside the endoscope circle
        (centred, radius 0.55-0.6 W; its dark edge is 0.02 W wide).
      - ``flow``: float32 (T, H, W, 2), (dx, dy) in pixels from where the surface point
        seen at (x, y) in frame t is to where it is in frame t+1 (behind the dark border
        the tissue's); the last frame is zeros.
      - ``flow_valid``: bool (T, H, W), True where that point lies inside the fully lit
        part of the circle in frame t and, at the rounded target, is still inside it, in
        the image and not occluded in frame t+1; the last frame is False.
      - ``keypoints``: float32 (T, N, 4, 2), (x, y) pixels in ``KEYPOINT_NAMES`` order:
        the tips of the left and right jaw (left/right as seen looking along the
        instrument towards its tips), Head = the wrist/clasper joint, ShaftEnd = where
        the shaft axis leaves the circle or the image (else its far end).
      - ``keypoints_visible``: bool (T, N, 4), True where the point is in the circle and
        its own part (jaw, or body for Head and ShaftEnd) is on top at a pixel of the 3x3
        neighbourhood of the rounded point.
      - ``instrument_type``: int32 (N,), type id per slot, 0 for an unused slot; used
        slots come first.

    Raises:
      ValueError: if num_frames < 1, height or width < 32, or max_instruments not in 1..3.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if height < 32 or width < 32:
        raise ValueError(f"height and width must be >= 32, got {height}x{width}")
    if not 1 <= max_instruments <= 3:
        raise ValueError(f"max_instruments must be in 1..3, got {max_instruments}")
    scene_rng, noise_rng = np.random.default_rng(seed).spawn(2)
    scene = _make_scene(scene_rng, num_frames, height, width, max_instruments, specular)
    return _render(scene, noise_rng, num_frames, max_instruments)


def _make_scene(
    rng: np.random.Generator, num_frames: int, height: int, width: int, max_instruments: int, specular: bool
) -> _Scene:
    """Draws the camera path, the tissue texture that covers all it can see, 1..max_instruments
    instruments spread around the image, the endoscope circle and the lighting.

    Every part draws from its own child generator and the frame-count-dependent draws
    come last in each, so a longer clip from the same seed starts with the same frames.
    """
    camera_rng, tissue_rng, layout_rng = rng.spawn(3)
    camera, reach = _camera(camera_rng, num_frames, height, width)
    size = int(np.ceil(2 * reach)) + 8
    camera = camera @ _rigid(-size / 2, -size / 2, 0.0)  # texture pixel -> image
    texture = _tissue_texture(tissue_rng, (size, size), width)
    count = int(layout_rng.integers(1, max_instruments + 1))
    base = layout_rng.uniform(0, 2 * np.pi)
    entries = base + 2 * np.pi * np.arange(count) / count + layout_rng.uniform(-0.35, 0.35, count)
    depth_order = [int(i) for i in layout_rng.permutation(count)]
    radius = float(layout_rng.uniform(0.55, 0.6) * width)
    angle = layout_rng.uniform(0, 2 * np.pi)
    shadow = 0.02 * width * np.array([np.cos(angle), np.sin(angle)])
    light = (layout_rng.uniform(-0.3, 0.3, 2) + _sinusoids(layout_rng, num_frames, 0.02, (0.01, 0.03), 2)).tolist()
    instruments = [
        _make_instrument(child, entry, num_frames, height, width)
        for child, entry in zip(layout_rng.spawn(count), entries)
    ]
    return _Scene(
        height, width, camera, texture, instruments, depth_order, radius, edge=max(2.0, 0.02 * width),
        light=light, shadow_offset=shadow, specular=specular,
    )


def _render(scene: _Scene, rng: np.random.Generator, num_frames: int, slots: int) -> dict[str, np.ndarray]:
    """Renders every frame of ``scene``; returns the arrays ``render_clip`` documents."""
    h, w = scene.height, scene.width
    grid = _Grid.make(scene)
    out = {
        "image": np.zeros((num_frames, h, w, 3), np.uint8),
        "mask_binary": np.zeros((num_frames, h, w), np.uint8),
        "mask_parts": np.zeros((num_frames, h, w), np.uint8),
        "mask_type": np.zeros((num_frames, h, w), np.uint8),
        "flow": np.zeros((num_frames, h, w, 2), np.float32),
        "flow_valid": np.zeros((num_frames, h, w), bool),
        "keypoints": np.zeros((num_frames, slots, 4, 2), np.float32),
        "keypoints_visible": np.zeros((num_frames, slots, 4), bool),
        "instrument_type": np.zeros(slots, np.int32),
    }
    type_ids = [inst.type_id for inst in scene.instruments]
    layer_type = np.array([0] + [i for i in type_ids for _ in range(_LAYERS_PER_INSTRUMENT)], np.uint8)
    layers = []
    for t in range(num_frames):
        rgb, layer, parts = _composite(scene, grid, t)
        layer[~grid.in_view] = 0
        out["image"][t] = _optics(scene, grid, rgb, rng)
        out["mask_type"][t] = layer_type[layer]
        out["mask_binary"][t] = layer > 0
        out["mask_parts"][t] = parts * grid.in_view
        out["keypoints"][t], out["keypoints_visible"][t] = _keypoints(scene, grid, t, layer, slots)
        layers.append(layer)
    for t in range(num_frames - 1):
        out["flow"][t], out["flow_valid"][t] = _flow(scene, grid, t, layers[t], layers[t + 1])
    out["instrument_type"][: len(type_ids)] = type_ids
    return out


# --------------------------------------------------------------------- contact sheet

_PART_COLOURS = np.array([[0, 0, 0], [60, 120, 255], [255, 210, 0], [0, 230, 90]], np.uint8)
_TYPE_COLOURS = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240]],
    np.uint8,
)
_KEYPOINT_COLOURS = ((255, 60, 60), (60, 160, 255), (255, 255, 0), (255, 0, 255))


def contact_sheet(clip: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 RGB sheet of a ``render_clip`` result: one row per frame; columns image with
    key points, parts overlay, type overlay, colour-coded flow (``flow.flow_to_rgb``, full
    brightness at the clip's largest valid speed, invalid pixels grey)."""
    valid = clip["flow_valid"]
    speed = np.linalg.norm(clip["flow"], axis=-1)
    max_speed = float(speed[valid].max()) if valid.any() else 1.0
    flows = [flow_lib.flow_to_rgb(f, max_speed, v) for f, v in zip(clip["flow"], valid)]
    rows = []
    for t, image in enumerate(clip["image"]):
        parts = _overlay(image, _PART_COLOURS[clip["mask_parts"][t]], clip["mask_parts"][t] > 0)
        types = _overlay(image, _TYPE_COLOURS[clip["mask_type"][t]], clip["mask_type"][t] > 0)
        tiles = [image.copy(), parts, types, flows[t].copy()]
        for tile in tiles:
            _draw_keypoints(tile, clip["keypoints"][t], clip["keypoints_visible"][t])
        rows.append(np.concatenate([np.pad(x, ((1, 1), (1, 1), (0, 0))) for x in tiles], 1))
    sheet = np.concatenate(rows, 0)
    names = [f"{i}:{INSTRUMENT_TYPES[i - 1]}" for i in clip["instrument_type"] if i]
    header = np.zeros((18, sheet.shape[1], 3), np.uint8)
    title = "image | parts | type | flow    " + ", ".join(names)
    cv2.putText(header, title, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([header, sheet], 0)


def _overlay(image: np.ndarray, colours: np.ndarray, where: np.ndarray) -> np.ndarray:
    blend = (0.45 * image + 0.55 * colours).astype(np.uint8)
    return np.where(where[..., None], blend, image)


def _draw_keypoints(tile: np.ndarray, points: np.ndarray, visible: np.ndarray) -> None:
    for slot_points, slot_visible in zip(points, visible):
        for (x, y), seen, colour in zip(slot_points, slot_visible, _KEYPOINT_COLOURS):
            if seen:
                cv2.circle(tile, (int(round(x)), int(round(y))), 3, colour, 1, cv2.LINE_AA)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render a synthetic clip and save a contact sheet PNG.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--max-instruments", type=int, default=3)
    parser.add_argument("--no-specular", action="store_true", help="no highlights, shadows or noise")
    parser.add_argument("--out", default="synthetic.png", help="PNG path")
    args = parser.parse_args(argv)
    clip = render_clip(
        args.seed, args.frames, args.height, args.width,
        max_instruments=args.max_instruments, specular=not args.no_specular,
    )
    if not cv2.imwrite(args.out, cv2.cvtColor(contact_sheet(clip), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {args.out}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
