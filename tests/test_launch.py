"""The launch scripts' dry runs: the commands a Cloud TPU pod run and a SLURM job would run."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry(script, *args, **env):
    return subprocess.run(["bash", os.path.join(ROOT, "launch", script), "--dry-run", *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=60)


def test_the_tpu_dry_run_creates_puts_runs_on_every_worker_collects_and_deletes():
    out = _dry("tpu.sh", "all", "pod", "us-central2-b", "v4-16", "configs/laparoflow.py:variant=paper", "/mnt/jaxsurg/runs/l", "--config.seed=1", BUCKET="my-bucket")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    order = ["queued-resources create pod", "tpu-vm scp --recurse", "pip install", "gcsfuse --implicit-dirs my-bucket /mnt/jaxsurg", "jaxsurg.main", "runs/l/eval", "queued-resources delete pod"]
    at = [next(i for i, line in enumerate(lines) if all(w in line for w in words.split())) for words in order]
    assert at == sorted(at), lines
    assert "--runtime-version=tpu-ubuntu2204-base" in lines[0] and "--accelerator-type=v4-16" in lines[0]
    run = lines[at[4]]
    assert "--worker=all" in run and "--config=configs/laparoflow.py:variant=paper" in run and "--config.seed=1" in run
    assert "JAXSURG_TFDS_DIR=/mnt/jaxsurg/tensorflow_datasets" in run


def test_the_tpu_script_refuses_bad_usage_and_unknown_accelerators():
    assert _dry("tpu.sh", "launch", "a", "b").returncode == 2
    out = _dry("tpu.sh", "create", "pod", "zone", "x9-8")
    assert out.returncode == 2 and "set TPU_RUNTIME" in out.stderr


def test_the_slurm_dry_run_prints_one_task_per_gpu_on_every_node():
    out = _dry("slurm.sh", "2", "4", "configs/unet11.py:variant=paper", "/shared/runs/u", "--config.seed=2", PARTITION="gpu")
    assert out.returncode == 0, out.stderr
    for words in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-task=1", "#SBATCH --partition=gpu",
                  "export JAXSURG_TFDS_DIR=/shared/runs/tensorflow_datasets",
                  "srun python3 -m jaxsurg.main --config=configs/unet11.py:variant=paper --workdir=/shared/runs/u --config.seed=2", "sbatch"):
        assert words in out.stdout, (words, out.stdout)
    assert _dry("slurm.sh", "two", "4", "c", "w").returncode == 2
