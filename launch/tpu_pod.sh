#!/usr/bin/env bash
# Run a jaxsurg config on every worker of a Cloud TPU VM (single host or pod slice).
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/unet11.py:variant=paper /mnt/gcs/runs/unet11 [--config.key=value ...]
#
# Each worker clones nothing: it expects this repository at ~/jaxsurg (copy it with
# `gcloud compute tpus tpu-vm scp --recurse . TPU_NAME:~/jaxsurg --worker=all --zone=ZONE`).
# The workdir and tfds_dir must be shared by all workers (e.g. a gcsfuse mount): orbax
# writes multi-host checkpoints there. Build datasets once beforehand (one worker);
# jax.distributed.initialize() is called automatically on a multi-host slice.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n "2,10p" "$0"; exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4; shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd ~/jaxsurg && python3 -m pip install -q -e . 'jax[tpu]' &&
  python3 -m jaxsurg.main --config=$config --workdir=$workdir $*"
