"""Scene of the synthetic laparoscopic video: tissue, composition, optics, exact ground truth.

Holds the tissue (camera path, procedural texture with vessels, fat, membranes, slope and
wetness), the scene a clip is drawn from (``_make_scene``: camera, tissue, 1-3
instruments of ``jaxsurg.data.synthetic_instruments``, endoscope circle, lighting) and
its frame-by-frame rendering (``_render``): layered compositing with cast shadows,
highlights, blur, illumination fall-off, sensor noise, and the exact masks, forward flow
and key points. The scene model (one rigid layer per pixel, affine canonical -> image
maps) is described in ``jaxsurg.data.synthetic``, whose ``render_clip`` is the public entry.

Units: pixel (x, y) is column x, row y with its centre at integer coordinates; flow and
key points in pixels, angles in radians, colours RGB in [0, 1] until ``_optics`` makes
uint8. Layer ids: 0 the tissue, then ``_LAYERS_PER_INSTRUMENT`` per instrument slot.
Procedural (no data source); randomness only from the generators passed in, in a fixed order.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from jaxsurg.data.synthetic_instruments import (
    _Instrument,
    _make_instrument,
    _rigid,
    _sinusoids,
    _smoothstep,
    _Sprite,
)

PART_NAMES = ("background", "shaft", "wrist", "claspers")
KEYPOINT_NAMES = ("LeftClasper", "RightClasper", "Head", "ShaftEnd")

_SHAFT, _WRIST, _CLASPERS = 1, 2, 3
_BODY, _JAW_LEFT, _JAW_RIGHT = 0, 1, 2  # the rigid layers of one instrument, bottom to top: jaws, body
_LAYERS_PER_INSTRUMENT = 3


# ------------------------------------------------------------------------------ tissue


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


# ------------------------------------------------------------------------------- scene


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
