#!/usr/bin/env bash
# jaxsurg on SLURM GPU hosts: one JAX process per GPU, every node of the allocation.
#
#   launch/slurm.sh [--dry-run] NODES GPUS_PER_NODE CONFIG WORKDIR [--config.key=value ...]
#
# Writes a batch script and submits it with sbatch (--dry-run prints the script and the
# sbatch command instead). In the job, srun starts NODES × GPUS_PER_NODE tasks with one GPU
# each; jax.distributed.initialize() reads the coordinator (the first node of
# SLURM_JOB_NODELIST), the process count (SLURM_NTASKS) and this process's id (SLURM_PROCID)
# from SLURM's environment, which jaxsurg asks for whenever SLURM_NTASKS > 1. WORKDIR and
# $TFDS_DIR (default WORKDIR/../tensorflow_datasets) must be on a file system every node
# sees; build the datasets once beforehand (one process) or let process 0 build them.
# Environment: PARTITION, ACCOUNT, TIME (default 04:00:00), PYTHON (default python3), TFDS_DIR.
set -euo pipefail

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
if [ $# -lt 4 ]; then sed -n "2,4p" "$0" >&2; exit 2; fi
nodes=$1 gpus=$2 config=$3 workdir=$4; shift 4
case "$nodes$gpus" in *[!0-9]*|"") echo "NODES and GPUS_PER_NODE must be whole numbers, got '$nodes' and '$gpus'" >&2; exit 2;; esac
tfds_dir=${TFDS_DIR:-$(dirname "$workdir")/tensorflow_datasets}
root=$(cd "$(dirname "$0")/.." && pwd)
args=$(printf ' %q' "$@")

script=$(cat <<EOF
#!/usr/bin/env bash
#SBATCH --job-name=jaxsurg
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$gpus
#SBATCH --gpus-per-task=1
#SBATCH --time=${TIME:-04:00:00}${PARTITION:+
#SBATCH --partition=$PARTITION}${ACCOUNT:+
#SBATCH --account=$ACCOUNT}
#SBATCH --output=$workdir/slurm-%j.out
set -euo pipefail
cd $root
export JAXSURG_TFDS_DIR=$tfds_dir
srun ${PYTHON:-python3} -m jaxsurg.main --config=$config --workdir=$workdir${args% }
EOF
)

if [ "$dry" = 1 ]; then
  printf '%s\n' "$script"
  echo "+ mkdir -p $workdir && sbatch <the script above>"
else
  mkdir -p "$workdir"
  printf '%s\n' "$script" | sbatch
fi
