#!/bin/sh
# telemetryd's job mapping directory, kept by Slurm: `jobmap.sh add` from the Prolog,
# `jobmap.sh remove` from the Epilog (prolog.sh and epilog.sh do just that). See README.md.
#
# One file per GPU index (or <gpu>.<gi> for a MIG instance), holding the ids of the jobs
# on it, one per line: the layout dcgm-exporter's --hpc-job-mapping-dir reads too. The
# telemetryd agent reads it every interval ([agent.attribution] job_map_dir) to charge
# each GPU's energy to its jobs.
#
# Environment: SLURM_JOB_ID (set by slurmd); for add, the GPUs from SLURM_JOB_GPUS, else
# CUDA_VISIBLE_DEVICES, else GPU_DEVICE_ORDINAL (comma-separated indices; a job without
# GPUs writes nothing); JOB_MAP_DIR (default /run/telemetryd/jobs); JOB_MAP_LOCK_WAIT
# (seconds to wait for a lock before taking it over, default 10).
set -eu
PATH=/usr/local/bin:/usr/bin:/bin  # slurmd runs prologs with no search path
export PATH

case ${1:-} in
add) me="telemetryd prolog" setting=Prolog ;;
remove) me="telemetryd epilog" setting=Epilog ;;
*)
    echo "telemetryd jobmap.sh: expected 'add' (prolog) or 'remove' (epilog), got '${1:-}'" >&2
    exit 2
    ;;
esac
dir=${JOB_MAP_DIR:-/run/telemetryd/jobs}
job=${SLURM_JOB_ID:-}
if [ -z "$job" ]; then
    echo "$me: SLURM_JOB_ID is not set (expected to run as Slurm's $setting)" >&2
    exit 1
fi
case $job in
*[!A-Za-z0-9_.+-]*)
    echo "$me: job id '$job' refused (expected letters, digits, _ . + -)" >&2
    exit 1
    ;;
esac

if [ "$1" = add ]; then
    gpus=${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-${GPU_DEVICE_ORDINAL:-}}}
    [ -n "$gpus" ] || exit 0
    mkdir -p "$dir"
else
    [ -d "$dir" ] || exit 0
fi

# Jobs sharing a GPU may start or end together: one writer at a time (mkdir is atomic).
# A lock left by a script killed mid-way is taken over after JOB_MAP_LOCK_WAIT seconds.
lock=$dir/.lock
tries=0
until mkdir "$lock" 2>/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -ge "${JOB_MAP_LOCK_WAIT:-10}" ]; then
        echo "$me: taking over the stale lock $lock" >&2
        break
    fi
    sleep 1
done
trap 'rmdir "$lock" 2>/dev/null || true' EXIT

# Write $2 as file $1 whole (temporary file + mv): the agent reads the old or the new.
replace() {
    chmod 644 "$2"
    mv -f "$2" "$1"
}

if [ "$1" = add ]; then
    for gpu in $(echo "$gpus" | tr ',' ' '); do
        case $gpu in
        '' | *[!0-9.]* | .* | *. | *.*.*)
            echo "$me: GPU '$gpu' skipped (expected an index such as 0, or 0.1 for MIG)" >&2
            continue
            ;;
        esac
        file=$dir/$gpu
        tmp=$dir/.$gpu.$$
        # The other jobs on this GPU stay; this one goes last, listed once.
        if [ -f "$file" ]; then
            grep -vxF -e "$job" "$file" >"$tmp" || true
        else
            : >"$tmp"
        fi
        echo "$job" >>"$tmp"
        replace "$file" "$tmp"
    done
    exit 0
fi

# remove: every file of the directory, not only the job's GPUs, so a job whose GPU
# variables differ at the end leaves no trace; a file left with no job goes.
for file in "$dir"/*; do
    [ -f "$file" ] || continue
    grep -qxF -e "$job" "$file" || continue
    tmp=$dir/.$(basename "$file").$$
    grep -vxF -e "$job" "$file" >"$tmp" || true
    if grep -q '[^[:space:]]' "$tmp"; then
        replace "$file" "$tmp"
    else
        rm -f "$tmp" "$file"
    fi
done
