"""Two JAX processes on this machine (a localhost coordinator, Gloo CPU collectives), each
loading only its share of every global batch, train the tiny U-Net11 as one process over the
same global batches does, bit for bit, resume from the checkpoint written in between, and
write the process-0 files (dataset, metrics, events, summary, pictures) once."""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxsurg.train.checkpoint import restore_final_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMD = [sys.executable, "-m", "jaxsurg.main", "--config=configs/unet11.py:variant=tiny"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(workdir, tfds_dir):
    port, procs = _free_port(), []
    for pid in range(2):
        env = dict(
            os.environ, JAXSURG_TFDS_DIR=str(tfds_dir), JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid),
        )
        procs.append(subprocess.Popen([*CMD, f"--workdir={workdir}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-3000:] + err[-3000:]
    return [out for out, _ in outs]


def _same(a, b):
    return jax.tree.structure(a) == jax.tree.structure(b) and all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_two_processes_train_as_one_resume_and_write_once(tmp_path):
    tfds, two, one = tmp_path / "tfds", tmp_path / "two", tmp_path / "one"
    outs = _two_processes(two, tfds)
    assert "dataset synthetic_surgery/tiny: building" in outs[0] and "jaxsurg: dataset" not in outs[1], outs[0][:2000]
    # One process over two devices: the same global batches, split the same way.
    env = dict(os.environ, JAXSURG_TFDS_DIR=str(tfds), JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run([*CMD, f"--workdir={one}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = restore_final_variables(str(one), "train", 4)
    assert _same(restore_final_variables(str(two), "train", 4), reference)
    # Written once, by process 0: one build of the dataset, one row per logged step, one
    # events file, the summary and the overlays.
    builds = [d for d in os.listdir(tfds / "synthetic_surgery" / "tiny") if not d.startswith(".")]
    assert builds == ["1.1.0"], builds
    rows = [json.loads(line) for line in open(two / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [2, 4]
    assert len(os.listdir(two / "tensorboard" / "train")) == 1 and len(os.listdir(two / "eval" / "overlays")) == 2
    assert json.load(open(two / "eval" / "summary.json"))["dice_mean"] == json.load(open(one / "eval" / "summary.json"))["dice_mean"]
    # The checkpoint written in between (step 2): both processes resume from it and end
    # where one uninterrupted process ends.
    assert sorted(os.listdir(two / "train" / "checkpoints"), key=str)[:2] == ["2", "4"]
    shutil.rmtree(two / "train" / "checkpoints" / "4")
    shutil.rmtree(two / "eval")
    outs = _two_processes(two, tfds)
    assert "resuming from the checkpoint at step 2" in outs[0], outs[0][-2000:]
    assert _same(restore_final_variables(str(two), "train", 4), reference)
    assert [json.loads(line)["step"] for line in open(two / "metrics.jsonl")] == [2, 4]
