#!/usr/bin/env bash
# The GPU checks (issue 17) in one script, for a lent GPU machine that reaches no package index: the wheels it lacks
# travel in .whl/ (README "GPU"). Everything it measures goes under $OUT (or ./gpu-out) as it is made, so a run cut
# short still returns what it finished. Sections run in order of what they answer, each inside what is left of
# BUDGET_S (default 450 s):
#   1. the benchmark: one SAE and groups against sae-lens, float32 / TF32 / bf16, the five-matmul floor, memory;
#      activations of a GPT-2-sized random model
#   2. tiny end to end on CUDA (TF32 on); Tables 1 and 2 against the committed CPU tables
#   3. the synth16k world built on the GPU and 200 steps of its whole training group, for the projection
#   4. smoke end to end on CUDA with TF32 on and off; Table 1 against the recorded CPU table
#   5. the tests that can take a device, on CUDA (`train.device: auto` picks it)
# SECTIONS picks some (default "bench tiny synth smoke tests"); BENCH_ARGS adds to the benchmark's arguments. Logs
# and the end-to-end runs' small artifacts are packed into $OUT/runs.tar.gz after each section (few files come back).
set -uo pipefail
SECTIONS=${SECTIONS:-bench tiny synth smoke tests}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
END=$(( $(date +%s) + ${BUDGET_S:-450} ))
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > /tmp/pip.txt 2>&1 || { tail -20 /tmp/pip.txt; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }
# seconds for a section: its own limit, or what is left before END less a margin, whichever is smaller
limit() { local left=$(( END - $(date +%s) - 10 )); (( left < $1 )) && echo $(( left > 0 ? left : 1 )) || echo "$1"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
python3 -c "import torch, saelib.train, saelib.evaluate, saelib.bench, saelib.synthetic, saelib.archs, saelib.export
import sae_lens.training.multi_sae_trainer, transformer_lens
print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tail -3 | tee -a "$OUT/summary.txt"

LOGS=/tmp/gpu-logs; mkdir -p $LOGS
pack() { tar czf "$OUT/runs.tar.gz" --exclude='*.safetensors' --exclude='sae_lens' -C /tmp gpu-logs \
  $(cd /tmp && ls -d e2e_*/runs e2e_*/lm/info.json e2e_*/data/info.json 2>/dev/null); }

if want bench; then
  log "1. benchmark"
  timeout "$(limit ${BENCH_S:-170})" python3 -m saelib.bench --only step,group,acts --dtypes float32,tf32,bf16 --quick \
    --no-record ${BENCH_ARGS:-} > "$LOGS/bench.txt" 2>&1
  log "bench exit $?"
  grep -E "^\||^[A-Z]" "$LOGS/bench.txt" | tail -60 >> "$OUT/summary.txt"
  pack
fi

e2e() {  # PROFILE TAG TF32 STEP_LIMIT
  local dir=/tmp/e2e_$1_$2 t0 step
  local sets=(--set out_dir="$dir" --set train.tf32="$3" --set train.device=cuda)
  t0=$(date +%s)
  for step in data lm train evaluate; do
    timeout "$(limit $4)" python3 -m saelib $step --profile "$1" "${sets[@]}" --no-progress > "$LOGS/e2e_$1_$2.$step.log" 2>&1 \
      || { log "$1 $2: $step failed (exit $?; 124 is the step limit of $4 s)"; tail -5 "$LOGS/e2e_$1_$2.$step.log" | tee -a "$OUT/summary.txt"; pack; return 1; }
  done
  log "$1 $2 end to end: $(( $(date +%s) - t0 )) s"
  timeout "$(limit 60)" python3 bench/gpu_tables.py "$1" "$dir" "$2" "$LOGS" "train.tf32=$3" train.device=cuda 2>&1 \
    | tee -a "$OUT/summary.txt"
  pack
}

if want tiny; then
  log "2. tiny end to end on CUDA"
  e2e tiny tf32 true 150
fi

if want synth; then
  log "3. synth16k on the GPU"
  timeout "$(limit ${SYNTH_S:-120})" python3 bench/gpu_synth16k.py "$LOGS" > "$LOGS/synth16k.txt" 2>&1
  log "synth16k exit $?"
  grep -v "it/s\]" "$LOGS/synth16k.txt" | tail -6 | tee -a "$OUT/summary.txt"
  pack
fi

if want smoke; then
  log "4. smoke end to end on CUDA, TF32 on and off"
  # the first training step compiles the kernels (about a minute)
  for t in ${SMOKE_TF32:-true false}; do e2e smoke "$([ "$t" = true ] && echo tf32 || echo notf32)" "$t" 200; done
fi

if want tests; then
  log "5. tests on CUDA"
  timeout "$(limit ${TESTS_S:-200})" python3 -m pytest -q -o addopts="" --durations=5 -p no:cacheprovider -m "not slow" \
    tests/test_reference.py tests/test_losses.py tests/test_sae.py tests/test_sparsity.py tests/test_metrics.py \
    tests/test_matching.py tests/test_stats.py tests/test_train.py tests/test_evaluate.py tests/test_activations.py \
    > "$LOGS/tests.txt" 2>&1
  log "tests exit $?"
  tail -15 "$LOGS/tests.txt" | tee -a "$OUT/summary.txt"
  pack
fi
log "done"
