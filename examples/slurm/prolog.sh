#!/bin/sh
# Slurm Prolog: record which GPUs this job holds in telemetryd's job mapping directory.
#
# One file per GPU index (or <gpu>.<gi> for a MIG instance), holding the ids of the jobs
# on it, one per line: the layout dcgm-exporter's --hpc-job-mapping-dir reads too. The
# telemetryd agent reads it every interval ([agent.attribution] job_map_dir) to charge
# each GPU's energy to its jobs. epilog.sh takes the job out again. See README.md.
#
# Environment: SLURM_JOB_ID (set by slurmd); the GPUs from SLURM_JOB_GPUS, else
# CUDA_VISIBLE_DEVICES, else GPU_DEVICE_ORDINAL (comma-separated indices); JOB_MAP_DIR
# (default /run/telemetryd/jobs); JOB_MAP_LOCK_WAIT (seconds, default 10). A job
# without GPUs writes nothing.
set -eu

dir=${JOB_MAP_DIR:-/run/telemetryd/jobs}
job=${SLURM_JOB_ID:-}
if [ -z "$job" ]; then
    echo "telemetryd prolog: SLURM_JOB_ID is not set (expected to run as Slurm's Prolog)" >&2
    exit 1
fi
case $job in
*[!A-Za-z0-9_.+-]*)
    echo "telemetryd prolog: job id '$job' refused (expected letters, digits, _ . + -)" >&2
    exit 1
    ;;
esac
gpus=${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-${GPU_DEVICE_ORDINAL:-}}}
[ -n "$gpus" ] || exit 0

mkdir -p "$dir"
lock=$dir/.lock

# Two jobs sharing a GPU may start together: one writer at a time (mkdir is atomic).
# A lock left by a script killed mid-way is taken over after JOB_MAP_LOCK_WAIT seconds
# (default 10).
tries=0
until mkdir "$lock" 2>/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -ge "${JOB_MAP_LOCK_WAIT:-10}" ]; then
        echo "telemetryd prolog: taking over the stale lock $lock" >&2
        break
    fi
    sleep 1
done
trap 'rmdir "$lock" 2>/dev/null || true' EXIT

for gpu in $(echo "$gpus" | tr ',' ' '); do
    case $gpu in
    '' | *[!0-9.]* | .* | *. | *.*.*)
        echo "telemetryd prolog: GPU '$gpu' skipped (expected an index such as 0, or 0.1 for MIG)" >&2
        continue
        ;;
    esac
    file=$dir/$gpu
    tmp=$dir/.$gpu.$$
    # Keep the other jobs on this GPU, then this one; readers see the old file or the new.
    if [ -f "$file" ]; then
        grep -vxF -e "$job" "$file" >"$tmp" || true
    else
        : >"$tmp"
    fi
    echo "$job" >>"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$file"
done
