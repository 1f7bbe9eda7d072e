#!/usr/bin/env bash
# Issue 15, part 2: pretrain PRESET (tiny by default; small where time allows) on the real corpus
# with masked LM only, the seven-task continual schedule and plain multi-task (equal steps:
# 7,000 x 32 sequences of 128), then fine-tune each release and the same architecture randomly
# initialised on the CPU suite (SEEDS seeds each) and compare them.
# Resumable: every piece reuses what is finished; rerun it after an interruption.
#   PRESET=tiny nohup bash experiments/suite_comparison.sh > runs/experiments/tiny.log 2>&1 &
# PRETRAIN_ONLY=1 stops after pretraining. Once pretraining is done, a second copy of the script
# started beside the first shares the suites' runs with it (eval-suite workers, one per core).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PRESET=${PRESET:-tiny}
SEEDS=${SEEDS:-3}
OUT=runs/experiments/real_$PRESET
$PY experiments/real_corpus.py --out runs/experiments/real_corpus
for variant in mlm_only continual multitask; do
    [ -f "$OUT/$variant/seed-0/release/config.json" ] && continue
    $PY experiments/ernie2_comparisons.py --corpus runs/experiments/real_corpus/corpus \
        --out $OUT --preset "$PRESET" --steps 7000 --seeds 0 --variants $variant \
        --pretrain-only --heldout-documents 100 --lr 5e-4 --warmup-steps 250
done
[ -n "${PRETRAIN_ONLY:-}" ] && exit 0
suite() {  # suite NAME ENCODER [ARGS]
    .venv/bin/ernie-style eval-suite --encoder "$2" --suite configs/suites/cpu.yaml \
        --output "$OUT/suite/$1" --seeds "$SEEDS" "${@:3}"
}
# No pretraining: the releases' exact architecture (same preset, same tokenizer), random weights.
suite random "preset:$PRESET" --tokenizer runs/experiments/real_corpus/corpus/tokenizer
for variant in mlm_only continual multitask; do
    suite $variant "$OUT/$variant/seed-0/release"
done
.venv/bin/ernie-style eval-suite --compare "$OUT/suite/random" "$OUT/suite/mlm_only" \
    "$OUT/suite/continual" "$OUT/suite/multitask" --labels random mlm_only continual multitask \
    --output "$OUT/suite/comparison"
