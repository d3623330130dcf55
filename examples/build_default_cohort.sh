#!/usr/bin/env bash
# Rebuild the cohort shipped beside fpt's default extractor (fpt/weights/extractor.cohort.h5):
# synthetic models the extractor never saw (pool seed 20 of 120 FD architectures + grid seeds
# 20-25; the extractor was trained on seeds 0-1 and grid seeds 0-19), applied to real photos,
# embedded, and the likelihood-ratio calibration fitted on them. Run it again whenever
# fpt/weights/extractor.pt changes: a cohort is tied to its extractor's sha256. About 10 minutes
# of CPU (pool ~8 min, cohort ~2 min).
#
#   bash examples/build_default_cohort.sh
#   REAL=/my/photos EXTRACTOR=my.pt OUT=my.cohort.h5 bash examples/build_default_cohort.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REAL=${REAL:-../shared/data/real}
POOL=${POOL:-runs/cohort-pool.h5}
EXTRACTOR=${EXTRACTOR:-fpt/weights/extractor.pt}
OUT=${OUT:-fpt/weights/extractor.cohort.h5}
export FPT_THREADS=1 OMP_NUM_THREADS=1

python -m fpt --threads 1 synth --images "$REAL/imagenet-sample" --images "$REAL/cbsd68" \
    --out "$POOL" --seeds 1 --seed-start 20 --arch '*-relu-*,*-tanh-bn,*-sigmoid-in' \
    --grid-depths 3,4,5 --grid-seeds 6 --size 32 --width 16 --batch 16 --max-steps 100 --crops 2048

python -m fpt --threads 1 cohort build --pool "$POOL" --photos "$REAL/imagenet-sample" --photos "$REAL/cbsd68" \
    --extractor "$EXTRACTOR" --out "$OUT" --device cpu
