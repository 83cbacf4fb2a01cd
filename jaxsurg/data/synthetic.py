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

The renderer lives in ``jaxsurg.data.synthetic_instruments`` (instrument types, shapes,
sprites and trajectories) and ``jaxsurg.data.synthetic_scene`` (tissue, camera, scene
composition, optics and ground truth); this module is the public entry.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from jaxsurg.data import flow as flow_lib
from jaxsurg.data.synthetic_instruments import INSTRUMENT_TYPES
from jaxsurg.data.synthetic_scene import KEYPOINT_NAMES, PART_NAMES, _make_scene, _render

__all__ = ["INSTRUMENT_TYPES", "KEYPOINT_NAMES", "PART_NAMES", "contact_sheet", "main", "render_clip"]


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
    parser.add_argument("--video", help="also write the frames as this video (mp4v), e.g. for jaxsurg.predict")
    parser.add_argument("--fps", type=float, default=25.0, help="the video's frame rate")
    args = parser.parse_args(argv)
    clip = render_clip(
        args.seed, args.frames, args.height, args.width,
        max_instruments=args.max_instruments, specular=not args.no_specular,
    )
    if args.video:
        writer = cv2.VideoWriter(args.video, cv2.VideoWriter_fourcc(*"mp4v"), args.fps, (args.width, args.height))
        if not writer.isOpened():
            raise OSError(f"could not write {args.video}")
        for frame in clip["image"]:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        print(f"wrote {args.video}")
    if not cv2.imwrite(args.out, cv2.cvtColor(contact_sheet(clip), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {args.out}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
