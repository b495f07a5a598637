#!/bin/sh
# Slurm Epilog: take this job out of telemetryd's job mapping directory (see prolog.sh).
#
# Every file of the directory is cleaned, not only those of the job's GPUs: the epilog
# must leave no trace of the job even if its GPU variables differ from the prolog's.
# A file left with no job is removed, so the GPU counts as free.
#
# Environment: SLURM_JOB_ID (set by slurmd); JOB_MAP_DIR (default /run/telemetryd/jobs);
# JOB_MAP_LOCK_WAIT (seconds a stale lock is waited for, default 10).
set -eu

dir=${JOB_MAP_DIR:-/run/telemetryd/jobs}
job=${SLURM_JOB_ID:-}
if [ -z "$job" ]; then
    echo "telemetryd epilog: SLURM_JOB_ID is not set (expected to run as Slurm's Epilog)" >&2
    exit 1
fi
[ -d "$dir" ] || exit 0
lock=$dir/.lock

tries=0
until mkdir "$lock" 2>/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -ge "${JOB_MAP_LOCK_WAIT:-10}" ]; then
        echo "telemetryd epilog: taking over the stale lock $lock" >&2
        break
    fi
    sleep 1
done
trap 'rmdir "$lock" 2>/dev/null || true' EXIT

for file in "$dir"/*; do
    [ -f "$file" ] || continue
    grep -qxF -e "$job" "$file" || continue
    tmp=$dir/.$(basename "$file").$$
    grep -vxF -e "$job" "$file" >"$tmp" || true
    if grep -q '[^[:space:]]' "$tmp"; then
        chmod 644 "$tmp"
        mv -f "$tmp" "$file"
    else
        rm -f "$tmp" "$file"
    fi
done
