#!/usr/bin/env bash
# Stops each job of submit.sh with its whole session (its process group).
for id in "$@"; do kill -TERM -- "-$id" 2>/dev/null || true; done
