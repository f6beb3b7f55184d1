#!/bin/bash
# Queues a split export on Slurm: the array of CKPT_PARTS tasks (export.sbatch; default 8) and the
# finish job, which waits for every task of the array to succeed (--dependency=afterok:<array job
# id>). sbatch passes the environment on, so finish.sbatch sees CKPT_PARTS and CKPT_CONFIG too.
#   examples/cluster/submit.sh --var run=/lustre/runs/llama3-70b
#   CKPT_PARTS=32 CKPT_CONFIG=/etc/ckpt/export.jsonc examples/cluster/submit.sh --var run=...
set -euo pipefail
here=$(dirname "$0")
count=${CKPT_PARTS:-8}
parts=$(sbatch --parsable --array="0-$((count - 1))" "$here/export.sbatch" "$@")
parts=${parts%%;*} # --parsable prints "jobid" or "jobid;cluster"
sbatch --dependency="afterok:$parts" "$here/finish.sbatch" "$@"
echo "queued parts as job $parts, the finish after it"
