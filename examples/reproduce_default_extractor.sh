#!/usr/bin/env bash
# Rebuild fpt's shipped default extractor from nothing but real photos: first the synthetic-model
# pool (288 FD architectures x 2 seeds + 60 grid generators), then 3000 steps of 2-process CPU
# training, ending with the fit of the fingerprint whitening for 4 x 4 inference windows
# (--preset default; the shipped file was made by examples/refit_windows.py --windows 4 from the
# 3 x 3 run of this same recipe, which does exactly that last step on the same weights).
# About 45 minutes on an idle 2-core machine (pool ~15 min, training ~26 min).
#
#   bash examples/reproduce_default_extractor.sh            # writes fpt/weights/extractor.pt
#   REAL=/my/photos OUT=my.pt bash examples/reproduce_default_extractor.sh
#
# REAL must hold imagenet-sample/ and cbsd68/ (the photos the shipped model used, in
# ../shared/data/real for fpt's developers); any folders of natural photos work for your own model.
set -euo pipefail
cd "$(dirname "$0")/.."
REAL=${REAL:-../shared/data/real}
POOL=${POOL:-runs/pool-default.h5}
OUT=${OUT:-fpt/weights/extractor.pt}
export FPT_THREADS=1 OMP_NUM_THREADS=1

python -m fpt --threads 1 synth --images "$REAL/imagenet-sample" --images "$REAL/cbsd68" \
    --out "$POOL" --seeds 2 --grid-depths 3,4,5 --grid-seeds 20 --size 32 --width 16 \
    --batch 16 --max-steps 100 --crops 2048 --workers 2

torchrun --standalone --nproc_per_node=2 -m fpt --threads 1 train --preset default \
    --pool "$POOL" --images "$REAL/imagenet-sample" --images "$REAL/cbsd68" --out "$OUT"
