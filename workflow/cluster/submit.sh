#!/usr/bin/env bash
# A local stand-in for a cluster's submit command (snakemake-executor-plugin-cluster-generic): each job runs as its
# own background process in its own session. Snakemake passes the job script last; this prints the job id (the
# process id) and records the job's exit status in .cluster_jobs/<id>.rc for status.sh.
# On a real cluster, use its own commands instead (e.g. `sbatch --parsable ...`), or the SLURM executor plugin.
set -euo pipefail
jobscript="${@: -1}"
dir=.cluster_jobs
mkdir -p "$dir"
setsid bash -c 'bash "$1" > "$2/$$.log" 2>&1; echo $? > "$2/$$.rc"' _ "$jobscript" "$dir" < /dev/null > /dev/null 2>&1 &
echo $!
