"""U-Net11 train step, JAX vs PyTorch (CPU), side by side in one run.

One step = forward, TernausNet loss ((1 − w)·CE − w·log(soft IoU), w = 0.3), backward and
an Adam(1e-4) update, on the same batch, image size, initial weights and loss in both
frameworks. JAX: the method's own step (``jaxsurg.methods.unet11.train_step``, jitted by
``jaxsurg.train.step.jit_step`` with the state donated, on uint8 frames as the pipeline
feeds them; it also reports the cross-entropy term), timed to ``block_until_ready``. PyTorch (CPU): the same network written here (``torch_model``),
``torch.optim.Adam``, ``torch.set_num_threads(os.cpu_count())``, timed to ``loss.item()``.

Each framework runs in its own child process (so memory figures do not mix); after their
warm-up steps the two take turns step by step (JAX, torch, JAX, …), so background load on
a shared machine hits both alike. Both start from the same weights, so their loss curves
must agree (printed as first/last loss).

    python benchmarks/unet11_train_step.py                            # 128×160, batch 4
    python benchmarks/unet11_train_step.py --upsample=convtranspose   # flax-style deconv
    python benchmarks/unet11_train_step.py --mode=deconv --height 112 --width 112 --batch 2
    python benchmarks/unet11_train_step.py --mode=layers --steps 7      # each 3×3 conv alone
    python benchmarks/unet11_train_step.py --conv3x3=winograd         # Winograd 3×3 convs
    python benchmarks/unet11_train_step.py --sizes 4x128x160,2x256x320,1x512x640

``--mode=deconv`` instead times one transposed-conv layer, ConvTranspose2d(128, 64, 4, 2,
1), forward + backward w.r.t. input and kernel: the phase formulation (custom VJP), the
same differentiated by XLA, ``lax.conv_transpose`` and ``torch.nn.functional.conv_transpose2d``.
``--mode=layers`` times each of U-Net11's 3×3 convolutions alone at the given batch and
size: forward, input gradient and weight gradient, JAX against PyTorch (``run_layers``).

Memory: the peak resident set size (sampled every 5 ms) above the level reached after
set-up and compilation, i.e. what the steps themselves allocate; for JAX on an accelerator,
``device.memory_stats()['peak_bytes_in_use']`` instead.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue as queue_lib
import resource
import sys
import threading
import time

import numpy as np

# The PyTorch U-Net11 is the tests' reference model (tests/torch_reference.py); the repository
# root goes on the path too, so a checkout runs this without installing jaxsurg.
_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, os.path.join(_ROOT, "tests"))
sys.path.insert(1, _ROOT)
import torch_reference

# --upsample value → jaxsurg.models.layers.conv_transpose_4x4_s2 impl.
UPSAMPLE_IMPLS = {"phase": "phase", "phase-autodiff": "phase_autodiff", "convtranspose": "conv_transpose"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RssPeak:
    """Peak RSS (bytes) above the RSS at ``start()``, sampled by a thread; ru_maxrss fallback."""

    def __init__(self):
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._stop = threading.Event()
        self.base = self.peak = self._rss()

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:  # not Linux: the process-wide high-water mark
            r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return r if sys.platform == "darwin" else r * 1024

    def _poll(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def delta(self) -> int:
        return self.peak - self.base


def tune_malloc() -> bool:
    """glibc only: keep freed large blocks mapped, so per-step buffers do not page-fault.

    XLA:CPU allocates its temporary buffer (~450 MB for the default 4×128×160 step) afresh
    on every execution, from a worker thread; glibc serves that with a new ``mmap`` and
    returns it with ``munmap``, so every step touches ~115k fresh pages (~0.25 CPU-s of
    page faults). One arena, a 1 GiB mmap threshold and a 2 GiB trim threshold make the
    heap keep and reuse those pages. Returns False where it could not be applied.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    return all(libc.mallopt(k, v) == 1 for k, v in (
        (m_arena_max, 1), (m_mmap_threshold, 1 << 30), (m_trim_threshold, 1 << 31)))


def make_batch(args) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (B, H, W, 3), as the pipeline gives them, and uint8 labels (B, H, W):
    discs, a 255 = ignore band."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.height, args.width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[: args.height, : args.width]
    labels = np.zeros((args.batch, args.height, args.width), np.uint8)
    for b in range(args.batch):
        cy, cx, r = rng.uniform(0.2, 0.8) * args.height, rng.uniform(0.2, 0.8) * args.width, args.height / 4
        labels[b] = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) * rng.integers(1, max(2, args.num_classes))
    labels[:, :2] = 255
    return images, labels


def timed_steps(step, args, turn):
    """Runs ``args.warmup`` untimed then ``args.steps`` timed calls of ``step() -> loss``.

    ``turn`` is None (run freely) or (mine, other, barrier): after the warm-up both processes
    meet at the barrier, then each step waits for ``mine`` and hands over with ``other``.
    Returns (losses, seconds per timed step, RssPeak).
    """
    losses, times = [], []
    with RssPeak() as mem:
        for _ in range(args.warmup):
            losses.append(step())
        if turn:
            turn[2].wait()
        for _ in range(args.steps):
            if turn:
                turn[0].wait()
                turn[0].clear()
                time.sleep(args.pause)  # let the other framework's spinning worker threads park
            t = time.perf_counter()
            losses.append(step())
            times.append(time.perf_counter() - t)
            if turn:
                turn[1].set()
    return losses, times, mem


# ----------------------------------------------------------------------------- PyTorch


def torch_ternaus_loss(logits, labels, w=0.3):
    """PyTorch twin of ``jaxsurg.losses.ternaus_loss`` (NCHW logits, (B, H, W) labels)."""
    import torch
    import torch.nn.functional as F

    valid = (labels != 255).float()
    target = torch.where(labels != 255, labels, torch.zeros_like(labels))
    eps = 1e-15

    def soft_iou(p, t):
        p, t = p * valid, t * valid
        inter = (p * t).sum()
        return (inter + eps) / (p.sum() + t.sum() - inter + eps)

    if logits.shape[1] == 1:
        z = logits[:, 0]
        ce = (F.binary_cross_entropy_with_logits(z, target.float(), reduction="none") * valid).sum()
        ce = ce / valid.sum().clamp(min=1)
        return (1 - w) * ce - w * torch.log(soft_iou(torch.sigmoid(z), (target == 1).float()))
    loss = (1 - w) * F.cross_entropy(logits, labels.long(), ignore_index=255)
    probs = torch.softmax(logits, 1)
    for c in range(logits.shape[1]):
        loss = loss - w * torch.log(soft_iou(probs[:, c], (target == c).float()))
    return loss


def initial_state_dict(args) -> dict[str, np.ndarray]:
    """The PyTorch model's default initialisation (seed 0), shared by both frameworks."""
    import torch

    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in torch_reference.unet11(args.num_classes, args.num_filters).state_dict().items()}


def run_torch(args, state_dict, turn, queue) -> None:
    if args.malloc_tuning:
        tune_malloc()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    images, labels = make_batch(args)
    model = torch_reference.unet11(args.num_classes, args.num_filters)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch_ternaus_loss(model((x - mean) / std), y)
        loss.backward()
        opt.step()
        return loss.item()

    losses, times, mem = timed_steps(step, args, turn)
    queue.put({
        "framework": "torch", "version": torch.__version__, "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()), "losses": losses, "times": times,
        "peak_bytes": mem.delta, "peak_kind": "RSS growth", "peak_rss_bytes": mem.peak,
    })


# ----------------------------------------------------------------------------- JAX


def run_jax(args, state_dict, turn, queue) -> None:
    if args.malloc_tuning:
        tune_malloc()
    import jax
    import jax.numpy as jnp

    from jaxsurg.config import stage_block
    from jaxsurg.methods import unet11 as unet11_method
    from jaxsurg.models import UNet11
    from jaxsurg.models.layers import conv3x3_impl
    from jaxsurg.train import mesh as mesh_lib
    from jaxsurg.train import step as step_lib
    from jaxsurg.train.state import TrainState, make_optimizer
    from jaxsurg.weights import torch_convert

    # The method's own step (methods.unet11.train_step, jitted as every stage is), with the
    # same Adam as the torch side (lr 1e-4, no weight decay) from a stage block.
    model = UNet11(num_classes=args.num_classes, num_filters=args.num_filters, upsample=UPSAMPLE_IMPLS[args.upsample])
    images, labels = make_batch(args)
    shape = (1, args.height, args.width, 3)
    if state_dict is None:
        params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros(shape))["params"]
    else:
        template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(shape))["params"]
        params = jax.device_put(torch_convert.load_unet11(state_dict, template))
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    tx, schedule = make_optimizer(stage_block(learning_rate=1e-4))
    state = step_lib.put_replicated(TrainState.create(params, tx, schedule=schedule), mesh)
    batch = {k: jax.device_put(v, mesh_lib.batch_sharding(mesh)) for k, v in {"image": images, "mask": labels}.items()}

    t = time.perf_counter()
    with conv3x3_impl(args.conv3x3):  # the formulation of the 3×3 convolutions, at trace time
        jitted = step_lib.jit_step(unet11_method.train_step(model, jaccard_weight=0.3), mesh)
        compiled = jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))
        return float(metrics["loss"])

    losses, times, mem = timed_steps(step, args, turn)
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    peak, kind = mem.delta, "RSS growth"
    if "peak_bytes_in_use" in stats:
        peak, kind = stats["peak_bytes_in_use"], "device peak_bytes_in_use"
    queue.put({
        "framework": "jax", "version": jax.__version__, "device": str(device), "upsample": args.upsample,
        "conv3x3": args.conv3x3, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "params": sum(int(np.prod(a.shape)) for a in jax.tree.leaves(holder["state"].params)),
        "losses": losses, "times": times, "compile_s": compile_s,
        "peak_bytes": peak, "peak_kind": kind, "peak_rss_bytes": mem.peak,
    })


# ----------------------------------------------------------------------------- one layer


def run_deconv(args) -> dict:
    """Forward + backward of one ConvTranspose2d(128, 64, 4, 2, 1) layer, four ways."""
    import jax
    import jax.numpy as jnp
    import torch

    from jaxsurg.models.layers import conv_transpose_4x4_s2

    torch.set_num_threads(os.cpu_count() or 1)
    cin, cout = 128, 64
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.height, args.width, cin), dtype=np.float32)
    w = rng.standard_normal((cin, cout, 4, 4), dtype=np.float32) * 0.05
    g = rng.standard_normal((args.batch, 2 * args.height, 2 * args.width, cout), dtype=np.float32)

    fns = {}
    xj, kj, gj = jnp.asarray(x), jnp.asarray(w.transpose(2, 3, 0, 1)), jnp.asarray(g)
    for impl in ("phase", "phase_autodiff", "conv_transpose"):
        def fwd_bwd(x, k, impl=impl):
            y, vjp = jax.vjp(lambda x, k: conv_transpose_4x4_s2(x, k, impl=impl), x, k)
            return y, vjp(gj)

        f = jax.jit(fwd_bwd)
        fns[f"jax {impl}"] = lambda f=f: jax.block_until_ready(f(xj, kj))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    wt = torch.from_numpy(w).requires_grad_(True)
    gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())

    def torch_fwd_bwd():
        xt.grad = wt.grad = None
        torch.nn.functional.conv_transpose2d(xt, wt, stride=2, padding=1).backward(gt)

    fns["torch conv_transpose2d"] = torch_fwd_bwd
    for fn in fns.values():  # compile and warm up
        for _ in range(max(args.warmup, 1)):
            fn()
    times = {name: [] for name in fns}
    for _ in range(args.steps):  # round-robin, so load changes hit all alike
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    print(f"\nConvTranspose2d({cin}, {cout}, 4, 2, 1) forward + backward (input and kernel), "
          f"input {args.batch}×{args.height}×{args.width}×{cin}, {os.cpu_count()} CPU cores")
    print(f"{'implementation':<26}{'median ms':>11}{'min ms':>9}")
    out = {}
    for name, t in times.items():
        out[name] = {"median_ms": 1e3 * float(np.median(t)), "min_ms": 1e3 * float(np.min(t))}
        print(f"{name:<26}{out[name]['median_ms']:>11.1f}{out[name]['min_ms']:>9.1f}")
    return {"mode": "deconv", "args": vars(args), "results": out}


# ----------------------------------------------------------------------------- 3×3 layers


def unet11_conv3x3_layers(batch: int, height: int, width: int, nf: int = 32) -> list[tuple[str, tuple[int, ...]]]:
    """U-Net11's 3×3 convolutions at an input of batch × height × width: (name, (N, H, W, Cin, Cout))."""
    h, w = height, width
    enc = [("conv1", 1, 3, 64), ("conv2", 2, 64, 128), ("conv3s", 4, 128, 256), ("conv3", 4, 256, 256),
           ("conv4s", 8, 256, 512), ("conv4", 8, 512, 512), ("conv5s", 16, 512, 512), ("conv5", 16, 512, 512)]
    dec = [("center", 32, 512, nf * 16), ("dec5", 16, 512 + nf * 8, nf * 16), ("dec4", 8, 512 + nf * 8, nf * 16),
           ("dec3", 4, 256 + nf * 4, nf * 8), ("dec2", 2, 128 + nf * 2, nf * 4), ("dec1", 1, 64 + nf, nf)]
    return [(name, (batch, h // s, w // s, cin, cout)) for name, s, cin, cout in enc + dec]


def run_layers(args) -> dict:
    """Each 3×3 convolution of U-Net11 alone: forward, input gradient and weight gradient, JAX vs PyTorch.

    JAX: ``jaxsurg.models.layers.conv2d`` (no bias) and its ``jax.vjp`` with respect to the
    input or the kernel, each jitted on its own (so the weight gradient includes the operand
    transposes XLA inserts for it). PyTorch: ``F.conv2d`` and ``aten.convolution_backward``
    for one of the two. Round-robin over all, fastest of ``--steps``.
    """
    import jax
    import jax.numpy as jnp
    import torch
    import torch.nn.functional as F

    from jaxsurg.models.layers import conv2d

    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    passes = ("fwd", "dx", "dW")
    rows, totals = {}, {f"{fw} {p}": 0.0 for fw in ("jax", "torch") for p in passes}
    print(f"\nU-Net11 3×3 convolutions alone, {args.batch}×{args.height}×{args.width} input, {os.cpu_count()} CPU cores "
          f"(ms, fastest of {args.steps})")
    print(f"{'layer':<8}{'N,H,W,Cin→Cout':>22}" + "".join(f"{'jax ' + p:>9}" for p in passes)
          + "".join(f"{'torch ' + p:>10}" for p in passes))
    for name, (n, h, w, cin, cout) in unet11_conv3x3_layers(args.batch, args.height, args.width, args.num_filters):
        x = rng.standard_normal((n, h, w, cin), dtype=np.float32)
        k = rng.standard_normal((3, 3, cin, cout), dtype=np.float32) * 0.05
        g = rng.standard_normal((n, h, w, cout), dtype=np.float32)
        xj, kj, gj = jnp.asarray(x), jnp.asarray(k), jnp.asarray(g)
        fwd = jax.jit(conv2d)
        dx = jax.jit(lambda x, k, g: jax.vjp(lambda x: conv2d(x, k), x)[1](g)[0])
        dw = jax.jit(lambda x, k, g: jax.vjp(lambda k: conv2d(x, k), k)[1](g)[0])
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        kt = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
        gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())

        def torch_backward(mask, xt=xt, kt=kt, gt=gt):
            return torch.ops.aten.convolution_backward(gt, xt, kt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

        fns = {
            "jax fwd": lambda: fwd(xj, kj).block_until_ready(),
            "jax dx": lambda: dx(xj, kj, gj).block_until_ready(),
            "jax dW": lambda: dw(xj, kj, gj).block_until_ready(),
            "torch fwd": lambda: F.conv2d(xt, kt, padding=1),
            "torch dx": lambda: torch_backward([True, False, False]),
            "torch dW": lambda: torch_backward([False, True, False]),
        }
        for fn in fns.values():
            for _ in range(max(args.warmup, 1)):
                fn()
        times = {key: [] for key in fns}
        for _ in range(args.steps):
            for key, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t)
        rows[name] = {key: 1e3 * min(t) for key, t in times.items()}
        for key, v in rows[name].items():
            totals[key] += v
        print(f"{name:<8}{f'{n},{h},{w},{cin}→{cout}':>22}" + "".join(f"{rows[name]['jax ' + p]:>9.1f}" for p in passes)
              + "".join(f"{rows[name]['torch ' + p]:>10.1f}" for p in passes))
    print(f"{'total':<30}" + "".join(f"{totals['jax ' + p]:>9.1f}" for p in passes)
          + "".join(f"{totals['torch ' + p]:>10.1f}" for p in passes))
    return {"mode": "layers", "args": vars(args), "layers": rows, "totals_ms": totals}


# ----------------------------------------------------------------------------- main


def run_train_step(args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    state_dict = None if args.no_torch else initial_state_dict(args)
    if args.no_torch:
        procs = [ctx.Process(target=run_jax, args=(args, None, None, queue))]
    else:
        jax_turn, torch_turn, barrier = ctx.Event(), ctx.Event(), ctx.Barrier(2)
        jax_turn.set()  # JAX goes first
        procs = [
            ctx.Process(target=run_jax, args=(args, state_dict, (jax_turn, torch_turn, barrier), queue)),
            ctx.Process(target=run_torch, args=(args, state_dict, (torch_turn, jax_turn, barrier), queue)),
        ]
    for p in procs:
        p.start()
    results = {}
    while len(results) < len(procs):
        try:
            r = queue.get(timeout=5)
            results[r["framework"]] = r
        except queue_lib.Empty:  # a child that died without a result would hang us
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                raise RuntimeError(f"benchmark child process failed (exit codes {[p.exitcode for p in procs]}); "
                                   "see its traceback above") from None
    for p in procs:
        p.join()

    rows = [results[k] for k in ("jax", "torch") if k in results]
    ex = {r["framework"]: args.batch / float(np.median(r["times"])) for r in rows}
    print(f"\nU-Net11 train step (forward, TernausNet loss, backward, Adam): batch {args.batch}×"
          f"{args.height}×{args.width}, nf={args.num_filters}, classes={args.num_classes}, "
          f"{os.cpu_count()} CPU cores, JAX upsample={args.upsample}, conv3x3={args.conv3x3}"
          f"{', malloc tuning' if args.malloc_tuning else ''}")
    print(f"{'framework':<10}{'examples/s':>11}{'median ms':>11}{'min ms':>9}{'peak MiB':>10}"
          f"{'RSS MiB':>9}  first → last loss")
    for r in rows:
        t = 1e3 * np.asarray(r["times"])
        print(f"{r['framework']:<10}{ex[r['framework']]:>11.2f}{np.median(t):>11.1f}{t.min():>9.1f}"
              f"{r['peak_bytes'] / 2**20:>10.0f}{r['peak_rss_bytes'] / 2**20:>9.0f}"
              f"  {r['losses'][0]:.5f} → {r['losses'][-1]:.5f}")
    summary = {"mode": "train_step", "args": vars(args), "examples_per_sec": ex, **results}
    if "torch" in ex:
        summary["ratio_jax_over_torch"] = ex["jax"] / ex["torch"]
        fastest = min(results["torch"]["times"]) / min(results["jax"]["times"])
        # The steps alternate (JAX i, torch i, JAX i+1, …): each pair saw nearly the same machine
        # state, so the median of the per-pair ratios is the least sensitive to load drifting.
        paired = float(np.median(np.asarray(results["torch"]["times"]) / np.asarray(results["jax"]["times"])))
        summary["ratio_fastest_step"], summary["ratio_paired_median"] = fastest, paired
        print(f"ratio jax/torch (examples/s, median step): {summary['ratio_jax_over_torch']:.2f}"
              f"  (> 1: JAX faster); by fastest step: {fastest:.2f}; median of the {len(results['jax']['times'])} "
              f"alternating pairs' ratios: {paired:.2f}")
    print(f"params: {results['jax']['params']:,}; JAX compile {results['jax']['compile_s']:.1f} s; "
          f"peak MiB = {rows[0]['peak_kind']} during the steps; RSS MiB = peak resident set of the process")
    print(f"JAX XLA_FLAGS: {results['jax']['xla_flags'] or '(none)'}")
    return summary


# --mode value → the function that runs it (one run at the args' batch and size).
MODES = {"train_step": run_train_step, "deconv": run_deconv, "layers": run_layers}


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """'4x128x160,2x256x320' → [(4, 128, 160), (2, 256, 320)]; ValueError naming a bad entry."""
    sizes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--sizes entries must be BATCHxHEIGHTxWIDTH (positive integers), got {item!r}")
        sizes.append(tuple(int(p) for p in parts))
    return sizes


def run_sizes(args) -> dict:
    """One run of ``--mode`` per --sizes entry, then (train_step) a table of the ratios."""
    runs = []
    for batch, height, width in parse_sizes(args.sizes):
        sub = argparse.Namespace(**{**vars(args), "batch": batch, "height": height, "width": width, "sizes": None})
        runs.append(MODES[args.mode](sub))
    if args.mode == "train_step":
        print(f"\nsummary ({os.cpu_count()} CPU cores, conv3x3={args.conv3x3}, upsample={args.upsample})")
        print(f"{'batch×H×W':<14}{'JAX ex/s':>10}{'torch ex/s':>12}{'JAX/torch':>11}")
        for r in runs:
            a, ex = r["args"], r["examples_per_sec"]
            ratio = r.get("ratio_jax_over_torch", float("nan"))
            print(f"{a['batch']}×{a['height']}×{a['width']:<8}{ex['jax']:>10.2f}{ex.get('torch', float('nan')):>12.2f}"
                  f"{ratio:>11.2f}")
    return {"mode": "sizes", "runs": runs}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=list(MODES), default="train_step",
                        help="the whole train step (default), one transposed-conv layer, or each 3×3 conv alone")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (after compilation)")
    parser.add_argument("--pause", type=float, default=0.3,
                        help="seconds between one framework's step and the other's (thread pools spin a while)")
    parser.add_argument("--num-filters", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=1)
    parser.add_argument("--upsample", choices=sorted(UPSAMPLE_IMPLS), default="phase",
                        help="JAX transposed conv: phase formulation with its custom VJP (default), the same "
                             "forward differentiated by XLA, or lax.conv_transpose as in flax.linen.ConvTranspose")
    parser.add_argument("--conv3x3", choices=["direct", "winograd"], default="direct",
                        help="JAX 3×3 convolutions: lax.conv_general_dilated (default) or Winograd F(2×2, 3×3) "
                             "(jaxsurg.models.layers.winograd_conv3x3), switched at trace time")
    parser.add_argument("--sizes",
                        help="comma-separated BATCHxHEIGHTxWIDTH list (e.g. 4x128x160,2x256x320,1x512x640): "
                             "one side-by-side run per size and a summary of the ratios; overrides --batch/--height/--width")
    parser.add_argument("--no-torch", action="store_true", help="JAX only; torch is not imported")
    parser.add_argument("--malloc-tuning", action="store_true",
                        help="glibc mallopt in both processes so large freed buffers stay mapped (see tune_malloc)")
    parser.add_argument("--out", help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    if args.sizes:
        result = run_sizes(args)
    else:
        result = MODES[args.mode](args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
