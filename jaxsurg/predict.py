"""Apply a trained jaxsurg model to a surgical video, a folder of frames or one image.

    python -m jaxsurg.predict --workdir=RUN --input=video.mp4 --out=DIR
    python -m jaxsurg.predict --workdir=RUN --export=model.jaxexport          # the model leaves the lab
    python -m jaxsurg.predict --exported=model.jaxexport --input=frames/ --out=DIR

RUN is any finished jaxsurg workdir (``jaxsurg.inference.load``). Each frame is resized to the
size the run evaluated at (area interpolation when shrinking, bilinear when enlarging, as
``jaxsurg.data.transforms.resize``: the aspect ratio follows the run's frames), segmented,
and its class map resized back to the frame's own size (``resize_classes``: each class's
indicator bilinearly, then the arg-max).

DIR receives:

- ``masks/<frame>.png``: uint8 class indices of the run's task (``classes.json`` names them;
  0 = background), at the frame's own size;
- ``overlay.mp4`` (a video or a folder; at the source's size and frame rate) or
  ``overlay.png`` (one image): the frame with class colours and outlines and a legend;
- ``predictions.jsonl``: per frame its name, index, time (s, videos), size and the area of
  every class in pixels; for a Laparoflow-SSL run with a key-point head, the key points of
  each type as [x, y, score] (pixel centres of the frame, score in [0, 1]);
- ``predict.json``, written last: the source, the model, the frame count and the throughput
  (decode, device and write seconds, each summed over its own thread; they overlap).

Frames stream: a decoding thread reads and resizes (``builders.common.in_background``), the
main thread runs the network, a writing thread resizes back, draws and writes, so a video is
never held in memory.
``--export=FILE`` writes the network with its variables as a serialized ``jax.export``
artifact (StableHLO, any batch size) and ``FILE.json`` (class names, frame size); the
artifact runs without jaxsurg's config or model code (README, "Use a trained model").
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import os
import queue
import re
import shutil
import sys
import threading
import time
from typing import Any, Iterator

import cv2
from absl import logging
import jax
import numpy as np

from jaxsurg import inference, progress, visualize
from jaxsurg.data import transforms
from jaxsurg.data.builders.common import in_background, put_unless_stopped

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FOLDER_FPS = 25.0  # overlay.mp4's frame rate for a folder of frames (--fps)
_DONE = object()


class Source:
    """Frames to predict, read one at a time: a video file (OpenCV), a folder of images (in
    natural name order: frame2 before frame10) or one image.

    Attributes:
      kind: ``"video"``, ``"folder"`` or ``"image"``.
      path: as given.
      fps: the video's frame rate (frames per second), ``FOLDER_FPS`` or ``--fps`` for a folder, None for an image.
      count: the number of frames (a video's container count, which may be approximate).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: not a video, image or folder with images (names the file and the known
        extensions); a video OpenCV cannot open or whose first frame cannot be decoded.
    """

    def __init__(self, path: str, fps: float | None = None):
        self.path = path
        if not os.path.exists(path):
            raise FileNotFoundError(f"--input={path}: no such file or folder")
        if os.path.isdir(path):
            names = [n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS)]
            if not names:
                raise ValueError(f"--input={path}: a folder without images ({', '.join(IMAGE_EXTENSIONS)})")
            self.kind, self.fps = "folder", float(fps or FOLDER_FPS)
            self._files = [os.path.join(path, n) for n in sorted(names, key=_natural_key)]
            self.count = len(self._files)
        elif path.lower().endswith(VIDEO_EXTENSIONS):
            capture = cv2.VideoCapture(path)
            ok = capture.isOpened() and capture.read()[0]
            self.fps = float(fps or capture.get(cv2.CAP_PROP_FPS) or FOLDER_FPS)
            self.count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
            capture.release()
            if not ok:
                raise ValueError(f"--input={path}: OpenCV cannot decode a frame of this video")
            self.kind = "video"
        elif path.lower().endswith(IMAGE_EXTENSIONS):
            self.kind, self.fps, self.count, self._files = "image", None, 1, [path]
        else:
            raise ValueError(f"--input={path}: not a video ({', '.join(VIDEO_EXTENSIONS)}), an image ({', '.join(IMAGE_EXTENSIONS)}) or a folder of images")

    def frames(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, uint8 (H, W, 3) RGB) in order; names are file stems, or ``<video stem>_<index:06d>``.

        Raises:
          ValueError: an image file OpenCV cannot read (names it).
        """
        if self.kind == "video":
            stem = os.path.splitext(os.path.basename(self.path))[0]
            capture = cv2.VideoCapture(self.path)
            try:
                index = 0
                while True:
                    ok, bgr = capture.read()
                    if not ok:
                        return
                    yield f"{stem}_{index:06d}", bgr[..., ::-1]
                    index += 1
            finally:
                capture.release()
        for f in self._files:
            bgr = cv2.imread(f, cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"{f}: OpenCV cannot read this image")
            yield os.path.splitext(os.path.basename(f))[0], bgr[..., ::-1]


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def keypoints_at(peaks: tuple[np.ndarray, np.ndarray, np.ndarray], detector: inference.KeypointDetector, size: tuple[int, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One frame's detections moved from the detector's frame to a frame of ``size`` = (H, W):
    {type name: (xy float32 (n, 2) pixel centres, scores float32 (n,))}, valid peaks only."""
    xy, scores, valid = peaks
    h, w = detector.frame_size
    scale = np.array([size[1] / w, size[0] / h], np.float32)
    return {n: ((xy[k][valid[k]] + 0.5) * scale - 0.5, scores[k][valid[k]]) for k, n in enumerate(detector.names)}


def overlay_frame(image: np.ndarray, classes: np.ndarray, class_names: tuple[str, ...], keypoints: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """The overlay video's frame: class colours blended over the frame (``visualize.colorize``),
    each class's outline in its colour, key points as dots (one colour per type), and a
    legend in the top-left corner.

    Args:
      image: uint8 (H, W, 3) RGB; classes: int (H, W) indices of ``class_names``.
      keypoints: {type name: (xy (n, 2) pixel centres in ``image``, scores (n,))}, or None.

    Returns:
      uint8 (H, W, 3) RGB.
    """
    out = visualize.colorize(image, classes)
    thickness = max(1, min(image.shape[:2]) // 240)
    legend = [(class_names[c], visualize.class_colour(c)) for c in range(1, len(class_names))]
    for c in range(1, len(class_names)):
        contours, _ = cv2.findContours((classes == c).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, visualize.class_colour(c), thickness)
    for t, (name, (xy, _)) in enumerate((keypoints or {}).items()):
        colour = visualize.class_colour(len(class_names) + t)
        legend.append((name, colour))
        for x, y in xy:
            cv2.circle(out, (int(round(x)), int(round(y))), 3 * thickness + 2, colour, -1, cv2.LINE_AA)
            cv2.circle(out, (int(round(x)), int(round(y))), 3 * thickness + 2, (0, 0, 0), 1, cv2.LINE_AA)
    scale, text_thickness = visualize.text_style(min(image.shape[:2]) // 2)
    y = 4
    for name, colour in legend:
        (tw, th), base = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, text_thickness)
        top, y = y, y + th + base + 4
        out[top:y, 4 : 12 + 2 * th + tw] //= 3  # a dark box behind the entry
        cv2.rectangle(out, (6, top + 2), (6 + th, y - 2), colour, -1)
        cv2.putText(out, name, (10 + th, y - base - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), text_thickness, cv2.LINE_AA)
    return out


def resize_classes(classes: np.ndarray, size: tuple[int, int], num_classes: int) -> np.ndarray:
    """An int (h, w) class map resized to ``size`` = (H, W): each class's indicator resized
    bilinearly, then the arg-max per pixel (smooth edges, no class that was not beside it).

    Returns:
      uint8 (H, W).
    """
    if classes.shape == tuple(size):
        return classes.astype(np.uint8)
    dsize = (size[1], size[0])
    if num_classes == 2:
        return (cv2.resize(classes.astype(np.float32), dsize, interpolation=cv2.INTER_LINEAR) > 0.5).astype(np.uint8)
    scores = [cv2.resize((classes == c).astype(np.float32), dsize, interpolation=cv2.INTER_LINEAR) for c in range(num_classes)]
    return np.argmax(np.stack(scores, -1), -1).astype(np.uint8)


class _Worker(threading.Thread):
    """A thread that runs ``fn``; on an exception it keeps it for the main thread and sets
    ``stop``, so that no other thread waits for it."""

    def __init__(self, fn, name: str, stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self._fn, self._halt, self.error, self.seconds = fn, stop, None, 0.0

    def run(self):
        try:
            self._fn(self)
        except BaseException as e:  # noqa: BLE001 -- re-raised by the main thread
            self.error = e
            self._halt.set()


def predict(
    model: inference.TrainedModel,
    source: Source,
    out_dir: str,
    *,
    batch_size: int = 8,
    device_fn: Any = None,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Segments every frame of ``source`` with ``model`` and writes ``out_dir`` (module doc).

    Args:
      model: the trained model (its ``variables`` may be cast, see ``--dtype``).
      source: the frames.
      out_dir: an empty or new folder.
      batch_size: frames (or clips) per device call.
      device_fn: ``uint8 (B, [T,] H, W, 3) → int32 (B, H, W)`` to run instead of
        ``jit(model.classes)`` with ``model.variables`` (an exported artifact's ``call``).
      record: fields added to ``predict.json`` (the model's origin).

    Returns:
      The ``predict.json`` record: frames, seconds, frames per second, and per-part seconds.

    Raises:
      ValueError: ``batch_size`` < 1; an unreadable frame (names it); OpenCV cannot write the video.
    """
    if batch_size < 1:
        raise ValueError(f"--batch_size={batch_size}: must be at least 1")
    if device_fn is None:
        jitted = jax.jit(model.classes)
        variables = jax.device_put(model.variables)

        def device_fn(x):
            return jitted(variables, x)

    h, w = model.frame_size
    names_k = len(model.class_names)
    detector = model.keypoints
    detect = functools.partial(jax.jit(detector.detect), jax.device_put(detector.variables)) if detector else None

    t0 = time.perf_counter()
    np.asarray(device_fn(np.zeros(model.input_shape(batch_size), np.uint8)))  # compiles, outside the throughput
    if detect is not None:
        detect(np.zeros((batch_size, *detector.frame_size, 3), np.uint8))
    compile_seconds = time.perf_counter() - t0
    os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)
    stop = threading.Event()
    predicted: queue.Queue = queue.Queue(maxsize=4)
    decode_seconds = [0.0]

    def batches():  # runs in builders.common.in_background's thread
        batch: list[tuple] = []
        frames = source.frames()
        while True:
            t0 = time.perf_counter()
            item = next(frames, None)
            if item is not None:
                name, rgb = item
                rgb = np.ascontiguousarray(rgb)
                small = transforms.resize({"image": rgb[None]}, (h, w))["image"][0]
                small_kp = transforms.resize({"image": rgb[None]}, detector.frame_size)["image"][0] if detector else None
                batch.append((name, rgb, small, small_kp))
            decode_seconds[0] += time.perf_counter() - t0
            if batch and (item is None or len(batch) == batch_size):
                yield batch
                batch = []
            if item is None:
                return

    paths = {k: os.path.join(out_dir, k) for k in ("predictions.jsonl", "overlay.mp4", "overlay.png")}
    partial = {k: os.path.join(out_dir, f".partial.{k}") for k in paths}

    def write(worker):
        video, lines = None, open(partial["predictions.jsonl"], "w", encoding="utf-8")
        index = 0
        try:
            while True:
                try:
                    item = predicted.get(timeout=0.1)
                except queue.Empty:
                    if stop.is_set():
                        return
                    continue
                if item is _DONE:
                    return
                t0 = time.perf_counter()
                for name, rgb, classes, points in item:
                    if model.postprocess is not None:
                        classes = model.postprocess(classes)
                    full = resize_classes(classes, rgb.shape[:2], names_k)
                    if not cv2.imwrite(os.path.join(out_dir, "masks", f"{name}.png"), full):
                        raise ValueError(f"{out_dir}/masks/{name}.png: OpenCV could not write it")
                    points = keypoints_at(points, detector, rgb.shape[:2]) if detector else None
                    picture = overlay_frame(rgb, full, model.class_names, points)[..., ::-1]
                    if source.kind == "image":
                        cv2.imwrite(partial["overlay.png"], picture)
                    else:
                        if video is None:
                            size = (rgb.shape[1], rgb.shape[0])
                            video = cv2.VideoWriter(partial["overlay.mp4"], cv2.VideoWriter_fourcc(*"mp4v"), source.fps, size)
                            if not video.isOpened():
                                raise ValueError(f"{out_dir}/overlay.mp4: OpenCV cannot write an mp4v video here")
                        if picture.shape[1::-1] != size:  # a folder of frames of several sizes
                            picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
                        video.write(np.ascontiguousarray(picture))
                    areas = np.bincount(full.ravel(), minlength=names_k)[:names_k]
                    row = {"frame": name, "index": index, "height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
                           "area_px": {n: int(a) for n, a in zip(model.class_names, areas)}}
                    if source.kind == "video":
                        row["time_s"] = round(index / source.fps, 4)
                    if points is not None:
                        row["keypoints"] = {n: [[round(float(x), 2), round(float(y), 2), round(float(s), 4)] for (x, y), s in zip(*p)] for n, p in points.items()}
                    lines.write(json.dumps(row) + "\n")
                    index += 1
                worker.seconds += time.perf_counter() - t0
        finally:
            lines.close()
            if video is not None:
                video.release()

    writer = _Worker(write, "write", stop)
    start = time.perf_counter()
    writer.start()
    device_seconds, count = 0.0, 0
    window: collections.deque = collections.deque(maxlen=model.clip_length)
    bar = progress.bar(total=source.count, desc="predict", unit="frame")
    try:
        for item in in_background(batches(), ahead=4):
            if stop.is_set():  # the writer failed
                break
            if model.clip_length > 1:  # each frame is the last of the clip of the latest frames
                clips = []
                for _, _, small, _ in item:
                    window.extend([small] * (model.clip_length if not window else 1))
                    clips.append(np.stack(window))
                x = np.stack(clips)
            else:
                x = np.stack([small for _, _, small, _ in item])
            n = len(x)
            if n < batch_size:  # the last batch, padded to the compiled shape
                x = np.concatenate([x, np.repeat(x[-1:], batch_size - n, axis=0)])
            t0 = time.perf_counter()
            classes = np.asarray(device_fn(x))[:n]
            peaks = [None] * n
            if detect is not None:
                x_kp = np.stack([small_kp for *_, small_kp in item])
                x_kp = np.concatenate([x_kp, np.repeat(x_kp[-1:], batch_size - n, axis=0)]) if n < batch_size else x_kp
                xy, scores, valid = jax.device_get(detect(x_kp))
                peaks = [(xy[i], scores[i], valid[i]) for i in range(n)]
            device_seconds += time.perf_counter() - t0
            put_unless_stopped(predicted, [(name, rgb, c, p) for (name, rgb, _, _), c, p in zip(item, classes, peaks)], stop)
            count += len(item)
            bar.update(len(item))
    finally:
        if sys.exc_info()[0] is not None:  # the device failed: the threads stop too
            stop.set()
        put_unless_stopped(predicted, _DONE, stop)
        writer.join()
        bar.close()
    if writer.error is not None:
        raise writer.error
    seconds = time.perf_counter() - start
    for key in ("predictions.jsonl", "overlay.mp4", "overlay.png"):
        if os.path.exists(partial[key]):
            os.replace(partial[key], paths[key])
    from jaxsurg.train.writers import write_json

    result = {
        **(record or {}), "input": os.path.abspath(source.path), "kind": source.kind, "frames": count,
        "fps_source": source.fps, "frame_size": list(model.frame_size), "class_names": list(model.class_names),
        "batch_size": batch_size, "compile_seconds": round(compile_seconds, 3), "seconds": round(seconds, 3), "frames_per_second": round(count / seconds, 3) if seconds else None,
        "seconds_by_part": {"decode": round(decode_seconds[0], 3), "device": round(device_seconds, 3), "write": round(writer.seconds, 3)},
        "note": "seconds_by_part: each part's own time summed over its thread; the three run at once, so they add up to more than 'seconds'",
    }
    write_json(os.path.join(out_dir, "classes.json"), {str(i): n for i, n in enumerate(model.class_names)})
    write_json(os.path.join(out_dir, "predict.json"), result)
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxsurg.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="a finished jaxsurg run")
    p.add_argument("--exported", help="an artifact written by --export (instead of --workdir)")
    p.add_argument("--input", help="a video file, a folder of frames or one image")
    p.add_argument("--out", help="the output folder (new or empty, unless --overwrite)")
    p.add_argument("--export", help="write the model as a jax.export artifact to this file (and FILE.json)")
    p.add_argument("--batch_size", type=int, default=8, help="frames per device call (default 8)")
    p.add_argument("--dtype", choices=sorted(inference.DTYPES), default="float32", help="parameters and frames on the device (bfloat16 for accelerators)")
    p.add_argument("--fps", type=float, help="overlay.mp4's frame rate for a folder of frames (default 25; a video keeps its own)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier predict in --out")
    return p


def _check_out(out: str, overwrite: bool) -> None:
    if os.path.isfile(out):
        raise ValueError(f"--out={out} is a file; give a folder")
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise ValueError(f"--out={out} is not empty; give a new folder or --overwrite (deletes its masks/ and predict outputs)")
        shutil.rmtree(os.path.join(out, "masks"), ignore_errors=True)
        for name in ("predictions.jsonl", "overlay.mp4", "overlay.png", "predict.json", "classes.json"):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out={out} is not writable")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """The command line (module doc). Every argument is checked, and the input opened,
    before the model is loaded. Returns the ``predict.json`` record (None for an export only)."""
    args = _parser().parse_args(argv)
    logging.set_verbosity(logging.ERROR)  # orbax's notes on opening checkpoints read-only
    try:
        if bool(args.workdir) == bool(args.exported):
            raise ValueError("give one of --workdir (a finished run) or --exported (an artifact of --export)")
        if args.exported and args.export:
            raise ValueError("--export needs --workdir (an artifact cannot be exported again)")
        if not args.input and not args.export:
            raise ValueError("give --input (with --out) to predict, or --export to write the model")
        if bool(args.input) != bool(args.out):
            raise ValueError("--input and --out go together")
        source = Source(args.input, args.fps) if args.input else None
        if args.out:
            _check_out(args.out, args.overwrite)
        if args.workdir:
            model = inference.load(args.workdir)
            model = dataclasses.replace(model, variables=inference.cast(model.variables, inference.DTYPES[args.dtype]))
            record, device_fn = {"workdir": os.path.abspath(args.workdir), "method": model.method, "dtype": args.dtype}, None
            if args.export:
                inference.write_export(model, args.export, args.dtype, record)
                progress.say(f"exported {model.method} ({args.dtype}, frames {model.frame_size[0]}×{model.frame_size[1]}) to {args.export} and {args.export}.json")
        else:
            model, device_fn = inference.load_exported(args.exported)
            record = {"exported": os.path.abspath(args.exported), "method": model.method}
    except (ValueError, FileNotFoundError) as e:
        print(f"jaxsurg.predict: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if source is None:
        return None
    result = predict(model, source, args.out, batch_size=args.batch_size, device_fn=device_fn, record=record)
    parts = result["seconds_by_part"]
    progress.say(
        f"predict: {result['frames']} frames in {result['seconds']:.1f} s ({result['frames_per_second']:.2f} frame/s); "
        f"decode {parts['decode']:.1f} s, device {parts['device']:.1f} s, write {parts['write']:.1f} s (each on its own thread); "
        f"masks, overlay and predictions.jsonl in {args.out}"
    )
    return result


def run() -> None:
    """The ``jaxsurg-predict`` console script (``main`` without its return value, which a
    console script would print as an exit status)."""
    main()


if __name__ == "__main__":
    run()
