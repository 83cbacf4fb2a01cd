"""AGSD's anchor generation (Liu et al. 2020, Sec. 2.1): the three cues of every frame fused
into a positive anchor a_pos = c_col·c_obj·c_loc (confidently instrument) and a negative
anchor a_neg = (1 − c_col)(1 − c_obj)(1 − c_loc) (confidently background), smoothed as the
authors' code does (resized down by ``smooth_factor`` and back, bilinear). With
``cues.mask_border`` (ours) the black border outside the endoscope's circular field of view
(``unlabelled.field_of_view``) gets a_pos = 0 and a_neg = 1: black is unsaturated with
a* = 0, so the colour cue would call it instrument (Cholec80 frames have a wide border,
the paper's EndoVis frames almost none).

Computed once per set of frames and cue settings and stored beside the built datasets, in
``<tfds_dir>/agsd_anchors/<digest>/`` (the digest covers the frames' pixels, their runs and
the cue settings, so another run on the same frames reuses them): ``anchors.npz`` (float16
maps of the cues and anchors), ``cues.json`` and ``anchors.png``. The objectness cue, the slow
one, is computed on each frame at its original resolution (BING's windows need it: pixel
AUC 0.72 at 128×232 against 0.96 at 480×854 on the real clip) and resized to the working
size; it is written chunk by chunk into ``<digest>.incomplete/`` and an interrupted computation
resumes from its chunks; the folder is renamed to ``<digest>`` only when everything is
written, under a file lock, so no half-written store looks complete.

``cues.json``: for each cue and both anchors, the pixel AUC of instrument vs the rest over the
frames that have ground truth (inside the field of view, unknown pixels left out; the ground
truth is read only for this score, never for training), so a user sees at once which cue
carries the signal on their videos.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import cv2
import ml_collections
import numpy as np

from jaxsurg import progress, visualize
from jaxsurg.data import datasets, unlabelled
from jaxsurg.data.builders.integrity import build_lock
from jaxsurg.methods.agsd import cues as cues_lib
from jaxsurg.methods.agsd import objectness as objectness_lib
from jaxsurg.methods.agsd.frames import AgsdFrames
from jaxsurg.train import stage
from jaxsurg.train.writers import write_json

CUES = ("colour", "objectness", "location")
MAPS = CUES + ("a_pos", "a_neg")
STORE_VERSION = 1
_CHUNK = 32


@dataclasses.dataclass
class Anchors:
    """The cues and anchors of every frame of an ``AgsdFrames``: float16 (N, H, W) maps in
    [0, 1] under ``maps[name]`` for ``MAPS``; ``auc`` the cues.json figures; ``directory`` the store."""

    maps: dict[str, np.ndarray]
    auc: dict[str, Any]
    directory: str

    @property
    def a_pos(self) -> np.ndarray:
        return self.maps["a_pos"]

    @property
    def a_neg(self) -> np.ndarray:
        return self.maps["a_neg"]


def fuse(colour: np.ndarray, objectness: np.ndarray, location: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sec. 2.1, "Anchor Generation": float (N, H, W) cues in [0, 1] → (a_pos, a_neg) float32."""
    c, o, l = (np.asarray(a, np.float32) for a in (colour, objectness, location))
    return c * o * l, (1 - c) * (1 - o) * (1 - l)


def smooth(maps: np.ndarray, factor: int) -> np.ndarray:
    """The code's anchor smoothing: (N, H, W) maps resized to (H/factor, W/factor) and back,
    bilinear (OpenCV); ``factor`` 1 returns them unchanged."""
    if factor <= 1:
        return np.asarray(maps, np.float32)
    h, w = maps.shape[1:]
    small = (max(1, w // factor), max(1, h // factor))
    return np.stack([cv2.resize(cv2.resize(m.astype(np.float32), small, interpolation=cv2.INTER_LINEAR), (w, h), interpolation=cv2.INTER_LINEAR) for m in maps])


def cue_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The settings the anchors depend on (beside the frames), for the store's digest."""
    c = config.cues
    return {
        "version": STORE_VERSION, "colour_normalise": c.colour_normalise, "objectness": c.objectness,
        "bing_dir": os.path.abspath(c.bing_dir) if c.bing_dir else "", "bing_top_k": int(c.bing_top_k),
        "smooth_factor": int(c.smooth_factor), "objectness_at": c.objectness_at, "mask_border": bool(c.mask_border),
    }


def check_cues(config: ml_collections.ConfigDict) -> None:
    """Early checks of ``config.cues`` (before any data is built).

    Raises:
      ValueError: an unknown objectness method, ``bing`` without ``bing_dir``, a smoothing
        factor below 1.
      FileNotFoundError: a ``bing_dir`` without BING's model files (``objectness.BingObjectness``).
    """
    c = config.cues
    if c.colour_normalise not in cues_lib.NORMALISE_CHOICES:
        raise ValueError(f"config.cues.colour_normalise={c.colour_normalise!r} is unknown; known: {cues_lib.NORMALISE_CHOICES}")
    if c.objectness not in objectness_lib.OBJECTNESS_METHODS:
        raise ValueError(f"config.cues.objectness={c.objectness!r} is unknown; known: {objectness_lib.OBJECTNESS_METHODS}")
    if c.objectness == "bing":
        if not c.bing_dir:
            raise ValueError("config.cues.objectness='bing' needs --config.cues.bing_dir=<folder with BING's nine ObjNessB2W8*.yml.gz model files>")
        objectness_lib.BingObjectness(c.bing_dir, top_k=int(c.bing_top_k))
    if c.objectness_at not in ("original", "working"):
        raise ValueError(f"config.cues.objectness_at={c.objectness_at!r} is unknown; known: 'original' (the frame's own resolution), 'working'")
    if int(c.smooth_factor) < 1:
        raise ValueError(f"config.cues.smooth_factor={c.smooth_factor}: expected an integer >= 1 (1 = no smoothing)")


def _digest(frames: AgsdFrames, settings: dict[str, Any]) -> str:
    h = hashlib.blake2b(digest_size=10)
    h.update(json.dumps(settings, sort_keys=True).encode())
    for a in (frames.images, frames.run):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _objectness(config, frames: AgsdFrames, folder: str) -> np.ndarray:
    c = config.cues
    kwargs = {"method": c.objectness}
    if c.objectness == "bing":
        kwargs.update(model_dir=c.bing_dir, top_k=int(c.bing_top_k))
    h, w = frames.images.shape[1:3]

    def one_chunk(s: int) -> np.ndarray:
        if c.objectness_at == "working":
            return objectness_lib.objectness_cue(frames.images[s : s + _CHUNK], **kwargs)
        maps = []
        for i in range(s, min(s + _CHUNK, len(frames))):
            m = objectness_lib.objectness_cue(frames.original(i)[None], **kwargs)[0]
            maps.append(m if m.shape == (h, w) else cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA))
        return np.stack(maps)

    chunks = []
    starts = range(0, len(frames), _CHUNK)
    for s in progress.bar(starts, total=len(starts), desc=f"objectness ({c.objectness})", unit="chunk"):
        path = os.path.join(folder, f"objectness-{s:06d}.npy")
        if os.path.exists(path):
            chunks.append(np.load(path))
            continue
        chunk = np.clip(one_chunk(s), 0, 1).astype(np.float16)
        np.save(path + ".tmp.npy", chunk)
        os.replace(path + ".tmp.npy", path)
        chunks.append(chunk)
    return np.concatenate(chunks)


def field_of_view(frames: AgsdFrames, rows: np.ndarray | None = None) -> np.ndarray:
    """bool (N, H, W): each frame's endoscope field of view (``unlabelled.field_of_view``),
    or only those of the frame indices ``rows`` (in their order)."""
    images = frames.images if rows is None else frames.images[rows]
    return np.stack([unlabelled.field_of_view(im) for im in images])


def cue_auc(frames: AgsdFrames, maps: dict[str, np.ndarray], fov: np.ndarray) -> dict[str, Any]:
    """The cues.json figures: per map of ``MAPS`` the pixel AUC of instrument vs the rest
    (``a_neg`` scored as 1 − a_neg) over the frames with ground truth, inside the field of
    view ``fov`` (bool (N, H, W), ``field_of_view``) and where the truth is known;
    NaN-free: a map is null where the frames hold only one class."""
    labelled = np.flatnonzero((frames.truth != 255).any(axis=(1, 2)))
    out: dict[str, Any] = {"frames": int(len(labelled)), "auc": {}}
    if not len(labelled):
        out["note"] = "no frame has ground truth: no AUC"
        return out
    valid = (frames.truth[labelled] != 255) & fov[labelled]
    truth = frames.truth[labelled] == 1
    out["instrument_fraction"] = round(float(truth[valid].mean()), 5)
    for name in MAPS:
        score = maps[name][labelled].astype(np.float32)
        auc = cues_lib.pixel_auc(1 - score if name == "a_neg" else score, truth, valid)
        out["auc"][name if name != "a_neg" else "1 - a_neg"] = None if np.isnan(auc) else round(float(auc), 4)
    return out


def anchors_picture(frames: AgsdFrames, maps: dict[str, np.ndarray], count: int = 4) -> np.ndarray:
    """``anchors.png``: rows of frame | colour | objectness | location | a_pos | a_neg for
    ``count`` frames evenly spaced over the frames (uint8 RGB)."""
    panels, titles = [], []
    for i in np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int):
        panels.append(frames.images[i])
        titles.append(f"frame {i} ({frames.part[i]})")
        for name in MAPS:
            grey = np.clip(maps[name][i].astype(np.float32) * 255, 0, 255).astype(np.uint8)
            panels.append(cv2.applyColorMap(grey, cv2.COLORMAP_VIRIDIS)[..., ::-1])
            titles.append(name)
    caption = "AGSD cues and anchors: a_pos = colour x objectness x location, a_neg = product of the inverted cues (bright = high)"
    return visualize.compose(panels, titles, columns=len(MAPS) + 1, caption=caption)


def _compute(config, frames: AgsdFrames, final: str, settings: dict[str, Any]) -> None:
    tmp = final + ".incomplete"
    os.makedirs(tmp, exist_ok=True)
    colour = np.concatenate([
        np.asarray(cues_lib.colour_cue(frames.images[s : s + _CHUNK], normalise=config.cues.colour_normalise), np.float32)
        for s in range(0, len(frames), _CHUNK)
    ])
    objectness = _objectness(config, frames, tmp).astype(np.float32)
    location = np.asarray(cues_lib.location_cue(colour, frames.run), np.float32)
    a_pos, a_neg = fuse(colour, objectness, location)
    factor = int(config.cues.smooth_factor)
    a_pos, a_neg = smooth(a_pos, factor), smooth(a_neg, factor)
    fov = field_of_view(frames)
    if config.cues.mask_border:  # outside the endoscope's field of view nothing is an instrument
        a_pos[~fov], a_neg[~fov] = 0.0, 1.0
    maps = {"colour": colour, "objectness": objectness, "location": location, "a_pos": a_pos, "a_neg": a_neg}
    maps = {k: np.clip(v, 0, 1).astype(np.float16) for k, v in maps.items()}
    np.savez(os.path.join(tmp, "anchors.tmp.npz"), **maps)
    os.replace(os.path.join(tmp, "anchors.tmp.npz"), os.path.join(tmp, "anchors.npz"))
    write_json(os.path.join(tmp, "cues.json"), {"settings": settings, "frames_total": len(frames), **cue_auc(frames, maps, fov)})
    cv2.imwrite(os.path.join(tmp, "anchors.png"), anchors_picture(frames, maps)[..., ::-1])
    for name in os.listdir(tmp):
        if name.startswith("objectness-"):
            os.remove(os.path.join(tmp, name))
    os.replace(tmp, final)


def anchors_for(config: ml_collections.ConfigDict, frames: AgsdFrames) -> Anchors:
    """The cues and anchors of ``frames``: read from the store when there, else computed
    (process 0; the others wait) and stored (see the module doc).

    Raises:
      ValueError / FileNotFoundError: ``check_cues``'s errors.
    """
    settings = cue_settings(config)
    root = os.path.join(config.tfds_dir or datasets.default_tfds_dir(), "agsd_anchors")
    final = os.path.join(root, _digest(frames, settings))

    def compute():
        os.makedirs(root, exist_ok=True)
        with build_lock(final + ".lock"):
            if os.path.isdir(final):
                progress.say(f"anchors: reusing {final}")
                return
            progress.say(f"anchors: computing the cues of {len(frames)} frames into {final}")
            _compute(config, frames, final, settings)

    stage.on_host0(compute, "anchors stored")
    with np.load(os.path.join(final, "anchors.npz")) as z:
        maps = {k: z[k] for k in MAPS}
    with open(os.path.join(final, "cues.json"), encoding="utf-8") as f:
        auc = json.load(f)
    return Anchors(maps, auc, final)
