"""End-to-end speed of ``jaxsurg.predict``: frames per second from a video file to masks,
overlay video and jsonl (decode + resize, the network, resize back + overlay + write), and
each part's share, for U-Net11 (nf 32, TernausNet's) and SegFormer-B0 + the side-tune head
(Laparoflow-SSL's Table 3 network), on whatever devices JAX finds.

    python benchmarks/predict_speed.py                                 # 854×480 and 1920×1080, both networks
    python benchmarks/predict_speed.py --sizes 1920x1080 --frames 16 --dtype bfloat16   # on an accelerator
    python benchmarks/predict_speed.py --model-size 256x448 --out /tmp/predict_speed.json

The networks are freshly initialised (speed does not depend on the weights); the network
runs at the video's own size unless ``--model-size`` H×W is given (then frames are resized
to it and the masks back, as a trained run's ``frame_size`` makes predict do). The video is
written first (mp4v, random smooth frames) and is not timed. ``compile_s`` is the first
call's compilation, outside the throughput. ``device_share`` is the device time over the
wall time: the decoding and writing threads overlap it, so the shares add up to more than 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxsurg import evaluate, inference, predict


def _video(path: str, frames: int, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (width, height))
    base = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 5)
    for i in range(frames):
        writer.write(np.roll(base, 4 * i, axis=1))
    writer.release()


def _model(name: str, frame_size: tuple[int, int]) -> inference.TrainedModel:
    if name == "unet11":
        from jaxsurg.models import UNet11

        net = UNet11(num_classes=1, num_filters=32)
        variables = {"params": jax.jit(net.init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))["params"]}
        return inference.TrainedModel("unet11", evaluate.classes_fn(net.apply), variables, frame_size, ("background", "instrument"))
    from jaxsurg.methods.laparoflow import finetune, inference_apply, pretrain

    config = ml_collections.ConfigDict({"model": {"variant": "b0", "out_dim": 256, "drop_path": 0.1, "dropout": 0.1, "dtype": "float32"}})
    net = finetune.segmentation_model(config, 4, freeze_backbone=True)
    variables = pretrain._init_variables(net, 0, (64, 64))
    names = ("background", "fat", "instrument", "gallbladder")
    return inference.TrainedModel("segformer_b0", evaluate.classes_fn(inference_apply(net), pad_multiple=1), variables, frame_size, names)


def _size(text: str) -> tuple[int, int]:
    a, b = (int(v) for v in text.lower().split("x"))
    return a, b


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="854x480,1920x1080", help="video sizes W×H, comma-separated")
    p.add_argument("--models", default="unet11,segformer", help="unet11, segformer")
    p.add_argument("--frames", type=int, default=24, help="frames per video")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dtype", choices=sorted(inference.DTYPES), default="float32")
    p.add_argument("--model-size", type=_size, help="H×W the network runs at (default: the video's size)")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            width, height = _size(size)
            video = os.path.join(tmp, f"{width}x{height}.mp4")
            _video(video, args.frames, width, height)
            for name in args.models.split(","):
                model = _model(name, args.model_size or (height, width))
                model = dataclasses.replace(model, variables=inference.cast(model.variables, inference.DTYPES[args.dtype]))
                out = os.path.join(tmp, f"{name}_{size}")
                r = predict.predict(model, predict.Source(video), out, batch_size=args.batch)
                parts = r["seconds_by_part"]
                row = {
                    "model": name, "video": f"{width}x{height}", "model_size": "x".join(map(str, model.frame_size)), "dtype": args.dtype,
                    "batch": args.batch, "frames": r["frames"], "frames_per_second": r["frames_per_second"], "compile_s": r["compile_seconds"],
                    "wall_s": r["seconds"], **{f"{k}_s": v for k, v in parts.items()},
                    "device_share": round(parts["device"] / r["seconds"], 3), "device": str(jax.devices()[0].device_kind),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n| model | video | network at | fps | decode s | device s | write s | device share | ({rows[0]['device']}, {args.dtype}, batch {args.batch})")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['video']} | {r['model_size']} | {r['frames_per_second']:.2f} | {r['decode_s']:.2f} | {r['device_s']:.2f} | {r['write_s']:.2f} | {r['device_share']:.2f} |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
