"""Laparoflow-SSL speed: pretraining steps per second and backbone + head inference
frames per second at 1920×1080 (the paper: 39 fps on an RTX 3090, 3,160 MiB), on whatever
devices JAX finds.

    python benchmarks/laparoflow_speed.py                        # both, paper sizes
    python benchmarks/laparoflow_speed.py --view 128 --batch 8   # the default variant's pretraining
    python benchmarks/laparoflow_speed.py --skip-pretrain --height 540 --width 960
    python benchmarks/laparoflow_speed.py --out /tmp/lssl_speed.json

Pretraining: one full step of ``jaxsurg.methods.laparoflow.pretrain.make_pretrain_step`` (views cut
on the device, both views through SegFormer-B0, the flow-guided InfoNCE with 16 anchors per
image, AdamW update) on random frames with a two-motion flow field. Inference: SegFormer-B0
+ the side-tune segmentation head (4 classes, the paper's Table 3 network), batch 1, class
map at full resolution, the jitted forward only (host transfer of the input excluded).
Reported: median and fastest step, the rates, and peak memory (device ``peak_bytes_in_use``
on accelerators, resident-set growth on the CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_device_mib() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None


def _time(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return times


def bench_pretrain(args) -> dict:
    sys.path.insert(0, "configs")
    import laparoflow as config_module  # configs/laparoflow.py

    from jaxsurg.methods import laparoflow
    from jaxsurg.methods.laparoflow import pretrain
    from jaxsurg.train import mesh as mesh_lib
    from jaxsurg.train import step as step_lib
    from jaxsurg.train.state import TrainState, make_optimizer

    config = config_module.get_config("variant=paper")
    config.pretrain.view_size = (args.view, args.view)
    config.pretrain.batch_size = args.batch
    config.pretrain.num_pairs = args.num_pairs
    config.model.dtype = args.dtype
    config = laparoflow.resolve_task(config)
    mesh = mesh_lib.make_mesh()
    model = pretrain.build_backbone(config)
    tx, schedule = make_optimizer(config.pretrain)
    variables = pretrain._init_variables(model, 0, (args.view, args.view))
    state = step_lib.put_replicated(TrainState.create(variables["params"], tx, variables["batch_stats"], schedule), mesh)
    step = pretrain.make_pretrain_step(model, config, 0.5, 2.0, mesh)
    h, w = int(args.view * 1.2), int(args.view * 1.6)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    flow = np.stack([np.where(xx > w / 2, 4.0, 0.8), np.where(yy > h / 2, -3.0, 0.6)], -1).astype(np.float32)
    batch = mesh_lib.global_batch({
        "image": rng.integers(0, 256, (args.batch, h, w, 3), dtype=np.uint8),
        "flow": np.repeat(flow[None], args.batch, 0),
        "valid": np.ones((args.batch, h, w), bool),
    }, mesh)
    holder = {"state": state}

    def one():
        holder["state"], metrics = step(holder["state"], batch)
        return metrics["loss"]

    rss0 = _rss_mib()
    times = _time(one, args.steps, args.warmup)
    med = float(np.median(times))
    return {
        "view": args.view, "batch": args.batch, "num_pairs": args.num_pairs, "dtype": args.dtype,
        "median_s": med, "min_s": float(np.min(times)), "steps_per_sec": 1.0 / med,
        "examples_per_sec": args.batch / med, "peak_device_mib": _peak_device_mib(),
        "rss_growth_mib": _rss_mib() - rss0,
    }


def bench_inference(args) -> dict:
    from jaxsurg.methods.laparoflow import finetune, pretrain
    from jaxsurg.methods.laparoflow.heads import SideTuneSegmentationHead

    config = ml_collections.ConfigDict({"model": {"variant": "b0", "out_dim": 256, "drop_path": 0.1, "dropout": 0.1, "dtype": args.dtype}})
    model = finetune.BackboneWithHead(pretrain.build_backbone(config), SideTuneSegmentationHead(num_classes=4), freeze_backbone=True)
    variables = pretrain._init_variables(model, 0, (64, 64))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    predict = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False), axis=-1).astype(jnp.uint8))
    x = jax.device_put(jnp.asarray(np.random.default_rng(0).random((1, args.height, args.width, 3)), jnp.float32))
    rss0 = _rss_mib()
    times = _time(lambda: predict(variables, x), args.frames, args.warmup)
    med = float(np.median(times))
    return {
        "height": args.height, "width": args.width, "dtype": args.dtype, "parameters": n_params,
        "median_s": med, "min_s": float(np.min(times)), "frames_per_sec": 1.0 / med,
        "peak_device_mib": _peak_device_mib(), "rss_growth_mib": _rss_mib() - rss0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--view", type=int, default=256, help="pretraining view size (square), multiple of 4")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-pairs", type=int, default=0, help="0 = every positive/negative pair (exact)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--skip-pretrain", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    result = {"devices": [str(d) for d in jax.devices()], "jax": jax.__version__}
    if not args.skip_pretrain:
        result["pretrain"] = bench_pretrain(args)
        print("pretrain:", json.dumps(result["pretrain"]), flush=True)
    if not args.skip_inference:
        result["inference"] = bench_inference(args)
        print("inference:", json.dumps(result["inference"]), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
