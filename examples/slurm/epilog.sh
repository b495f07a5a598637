#!/bin/sh
# Slurm Epilog: take this job out of telemetryd's job mapping directory.
# jobmap.sh (same directory) does the work; see it and README.md for the environment.
set -eu
exec /bin/sh "$(dirname "$0")/jobmap.sh" remove
