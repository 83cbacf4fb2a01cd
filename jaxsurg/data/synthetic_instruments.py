"""Instruments of the synthetic laparoscopic video: types, shapes, sprites and motion.

Holds the seven instrument types (``INSTRUMENT_TYPES``, EndoVis 2017 type ids 1..7, Allan
et al., "2017 Robotic Instrument Segmentation Challenge", arXiv:1902.06426), their
procedural shapes (hand-made approximations of the da Vinci tools, not measured), the
anti-aliased RGBA sprites of an instrument's three rigid layers (body = shaft + wrist, left
jaw, right jaw), each instrument's smooth trajectory and jaw opening, and the small
geometry / smooth-motion helpers the scene (``jaxsurg.data.synthetic_scene``) shares.

Units: lengths and positions in pixels (shape sizes are fractions of an instrument's
scale, itself 1.35-1.7 image widths), angles in radians, colours RGB in [0, 1]. Canonical
coordinates (u, v) of a layer have the wrist joint at the origin, the shaft along -u.
Randomness only from the ``np.random.Generator`` passed in; the order of draws is part of
the contract (``jaxsurg.data.synthetic.render_clip`` is bit-reproducible per seed).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

INSTRUMENT_TYPES: tuple[str, ...] = (
    "Bipolar Forceps",
    "Prograsp Forceps",
    "Large Needle Driver",
    "Vessel Sealer",
    "Grasping Retractor",
    "Monopolar Curved Scissors",
    "Other",
)
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
