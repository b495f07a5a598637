#!/bin/sh
# Slurm Epilog: take this job out of telemetryd's job mapping directory.
# jobmap.sh (same directory) does the work; see it and README.md for the environment.
set -eu
case $0 in */*) here=${0%/*} ;; *) here=. ;; esac  # no PATH, so no dirname
exec /bin/sh "$here/jobmap.sh" remove
