"""What the methods' end-to-end tests check of a finished run's reloaded model: scored again
on the run's own test frames, it gives the run's figures exactly (so ``jaxsurg.predict``
applies the network that was evaluated, not another)."""

import json
import os

import jax
import numpy as np

from jaxsurg import evaluate, inference
from jaxsurg.data import pipeline


def reload_and_score(workdir, tfds_dir, out_dir, frames=None, num_frames=None):
    """``inference.load(workdir)`` scored with ``evaluate.evaluate_segmentation`` on ``frames``
    (default: ``pipeline.test_frames`` of the run's resolved config); returns (the run's
    summary, the reloaded model's summary)."""
    os.environ["JAXSURG_TFDS_DIR"] = str(tfds_dir)
    config, summary = inference.read_run(str(workdir))
    model = inference.load(str(workdir))
    if frames is None:
        data = pipeline.load(config)
        frames, num_frames = pipeline.test_frames(config, data), len(data.test_rows)
    classes = jax.jit(model.classes)
    window: list[np.ndarray] = []

    def on_clips(images):
        """A clip model (Dual MF★) sees each frame as the last of the ``clip_length`` latest
        frames in time order, the first frame repeated at the start (as predict and the run's
        evaluation)."""
        clips = []
        for im in images:
            window[:] = (window or [im] * model.clip_length)[1:] + [im]
            clips.append(np.stack(window))
        return np.stack(clips)

    def predict(images):
        out = np.asarray(classes(model.variables, on_clips(images) if model.clip_length > 1 else images))
        return np.stack([model.postprocess(c) for c in out]) if model.postprocess is not None else out

    again = evaluate.evaluate_segmentation(
        predict, frames, num_frames=num_frames, class_names=model.class_names, out_dir=str(out_dir), header={}, num_overlays=0,
    )
    return summary, again


def assert_reload_reproduces_eval(workdir, tfds_dir, out_dir, **frames):
    summary, again = reload_and_score(workdir, tfds_dir, out_dir, **frames)
    assert again["num_frames"] == summary["num_frames"]
    assert (again["iou_mean"], again["dice_mean"]) == (summary["iou_mean"], summary["dice_mean"]), json.dumps(
        {"run": [summary["iou_mean"], summary["dice_mean"]], "reloaded": [again["iou_mean"], again["dice_mean"]]}
    )
