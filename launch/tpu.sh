#!/usr/bin/env bash
# jaxsurg on a Cloud TPU VM or pod slice, through queued resources.
#
#   launch/tpu.sh [--dry-run] all     NAME ZONE ACCELERATOR CONFIG WORKDIR [--config.key=value ...]
#   launch/tpu.sh [--dry-run] create  NAME ZONE ACCELERATOR
#   launch/tpu.sh [--dry-run] put     NAME ZONE
#   launch/tpu.sh [--dry-run] run     NAME ZONE CONFIG WORKDIR [--config.key=value ...]
#   launch/tpu.sh [--dry-run] collect NAME ZONE WORKDIR
#   launch/tpu.sh [--dry-run] delete  NAME ZONE
#
# create:  asks for the TPU (ACCELERATOR e.g. v5litepod-8, v4-32) as queued resource NAME, with
#          the runtime of its generation (or $TPU_RUNTIME), and waits until it is ACTIVE (it may
#          queue for a while).
# put:     copies this repository to ~/jaxsurg on every worker, installs it with jax[tpu], and,
#          with $BUCKET set, mounts gs://$BUCKET at /mnt/jaxsurg with gcsfuse on every worker.
# run:     the same `python -m jaxsurg.main` on all workers at once; on a pod slice each worker is
#          one JAX process and jax.distributed.initialize() finds the others by itself (from the
#          TPU metadata; TPU_WORKER_HOSTNAMES lists several hosts). WORKDIR and the TFDS data dir
#          must be one folder every worker sees: put them under /mnt/jaxsurg (the bucket mount);
#          process 0 alone writes the datasets, metrics, summaries and pictures, and orbax
#          writes each checkpoint from all workers.
# collect: copies WORKDIR's config, summary, metrics and pictures (not the checkpoints) from
#          worker 0 to ./runs/NAME.
# delete:  deletes the queued resource and its TPU (billing stops).
# all:     create, put, run, collect, then delete (also when the run fails).
#
# --dry-run prints each command instead of running it. Environment: PROJECT (gcloud's default
# when unset), TPU_RUNTIME, BUCKET, TFDS_DIR (default /mnt/jaxsurg/tensorflow_datasets).
set -euo pipefail

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
usage() { sed -n "2,9p" "$0" >&2; exit 2; }
[ $# -ge 3 ] || usage
action=$1 name=$2 zone=$3; shift 3
# The software version each TPU generation boots (Cloud TPU docs, "TPU software versions").
runtime_for() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo "no default runtime for accelerator '$1'; set TPU_RUNTIME" >&2; exit 2 ;;
  esac
}
tfds_dir=${TFDS_DIR:-/mnt/jaxsurg/tensorflow_datasets}
project=()
if [ -n "${PROJECT:-}" ]; then project=(--project="$PROJECT"); fi

# Runs (or, with --dry-run, prints) one command, its arguments quoted as the shell would read them.
do_cmd() {
  if [ "$dry" = 1 ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

create() {
  local accelerator=$1 runtime
  runtime=${TPU_RUNTIME:-$(runtime_for "$accelerator")}
  do_cmd gcloud compute tpus queued-resources create "$name" --node-id="$name" --zone="$zone" \
    --accelerator-type="$accelerator" --runtime-version="$runtime" "${project[@]}"
  if [ "$dry" = 1 ]; then
    do_cmd gcloud compute tpus queued-resources describe "$name" --zone="$zone" --format='value(state.state)' "${project[@]}"
    return
  fi
  local state=""
  until [ "$state" = "ACTIVE" ]; do
    state=$(gcloud compute tpus queued-resources describe "$name" --zone="$zone" --format='value(state.state)' "${project[@]}")
    case "$state" in FAILED|SUSPENDED) echo "queued resource $name is $state" >&2; exit 1;; esac
    [ "$state" = "ACTIVE" ] || { echo "queued resource $name: $state; waiting" >&2; sleep 30; }
  done
}

ssh_all() {
  do_cmd gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all "${project[@]}" --command="$1"
}

put() {
  local root
  root=$(cd "$(dirname "$0")/.." && pwd)
  do_cmd gcloud compute tpus tpu-vm scp --recurse "$root" "$name":~/jaxsurg --zone="$zone" --worker=all "${project[@]}"
  ssh_all "cd ~/jaxsurg && python3 -m pip install -q -e . 'jax[tpu]'"
  if [ -n "${BUCKET:-}" ]; then
    ssh_all "sudo mkdir -p /mnt/jaxsurg && sudo chown \$USER /mnt/jaxsurg && gcsfuse --implicit-dirs $BUCKET /mnt/jaxsurg"
  fi
}

run() {
  [ $# -ge 2 ] || usage
  local config=$1 workdir=$2; shift 2
  local args
  args=$(printf ' %q' "$@")
  ssh_all "cd ~/jaxsurg && JAXSURG_TFDS_DIR=$tfds_dir python3 -m jaxsurg.main --config=$config --workdir=$workdir${args% }"
}

collect() {
  [ $# -ge 1 ] || usage
  local workdir=$1
  do_cmd mkdir -p "runs/$name"
  for item in config.json made_by.json metrics.jsonl eval; do
    do_cmd gcloud compute tpus tpu-vm scp --recurse "$name:$workdir/$item" "runs/$name/" --zone="$zone" --worker=0 "${project[@]}"
  done
}

delete() {
  do_cmd gcloud compute tpus queued-resources delete "$name" --zone="$zone" --force --quiet "${project[@]}"
}

case "$action" in
  create) [ $# -eq 1 ] || usage; create "$1" ;;
  put) put ;;
  run) run "$@" ;;
  collect) collect "$@" ;;
  delete) delete ;;
  all)
    [ $# -ge 3 ] || usage
    accelerator=$1 config=$2 workdir=$3; shift 3
    create "$accelerator"
    trap delete EXIT
    put
    run "$config" "$workdir" "$@"
    collect "$workdir"
    ;;
  *) usage ;;
esac
