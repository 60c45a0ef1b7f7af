#!/usr/bin/env bash
# Prints running, success or failed for a job id of submit.sh.
dir=.cluster_jobs
id="$1"
if [[ -f "$dir/$id.rc" ]]; then
  [[ "$(cat "$dir/$id.rc")" == 0 ]] && echo success || echo failed
elif kill -0 "$id" 2>/dev/null; then
  echo running
else
  echo failed
fi
