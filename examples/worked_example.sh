#!/usr/bin/env bash
# The README's worked example on real generators, reproducible exactly.
#
#   bash examples/worked_example.sh                 # full size: 20 images per model, a few minutes on CPU
#   N=5 V=3 bash examples/worked_example.sh         # reduced (what tests/test_examples.py runs)
#
# Probes are fixed by name, not picked: in each model folder, sorted by file name,
#   - the FIRST N images are enrolled,
#   - the LAST image is the held-out probe (never enrolled; N must leave it out),
#   - for verify, udnie-A = fst-udnie images 1..V, udnie-B = images V+1..2V (disjoint),
#     scream = fst-scream images 1..V.
# Everything is copied into a fresh temporary folder with a fresh gallery; the data is only read.
#
# Environment:
#   DATA         dev-generators folder (default: ../shared/data/dev-generators from the repo root)
#   N            images enrolled per model (default 20)
#   V            images per side for verify (default 10)
#   MODELS       the models enrolled before identify (default: stylegan2-ffhq256 fst-la_muse sd14-invokeai)
#   UNENROLLED   the model whose probe must come out unknown (default: fst-udnie)
#   LINEAGE      models enrolled after identify/verify, for lineage (default: 5 more generators;
#                "" skips the lineage step)
#   FPT_THREADS  torch threads (default: the number of CPUs, at most 4)
#   COLUMNS      width of fpt's tables and wrapped lines (default 130, so the output is the same
#                in a terminal and in a pipe)
#   WORK         keep the working folder here (must not exist yet) instead of a deleted temp dir
#   JSON=1       add --json to identify/verify/lineage (for tests); each step's stdout is also
#                saved as $WORK/<step>.out
# Exit code: 0 when every step ran (identify's "some unknown" code 10 and verify's "different
# models" code 10 are expected answers here and are printed, not treated as failures).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${DATA:-$ROOT/../shared/data/dev-generators}"
N="${N:-20}"
V="${V:-10}"
MODELS="${MODELS:-stylegan2-ffhq256 fst-la_muse sd14-invokeai}"
UNENROLLED="${UNENROLLED:-fst-udnie}"
LINEAGE="${LINEAGE-ldm-txt2img-256 fst-scream fst-udnie fst-mathura fst-rain_princess}"
if [ -z "${FPT_THREADS:-}" ]; then
    FPT_THREADS="$(nproc 2>/dev/null || echo 1)"
    [ "$FPT_THREADS" -gt 4 ] && FPT_THREADS=4
fi
export FPT_THREADS
# Tables as wide as the README quotes them, whatever the terminal (rich reads COLUMNS).
export COLUMNS="${COLUMNS:-130}"
JSONFLAG=()
[ "${JSON:-0}" = 1 ] && JSONFLAG=(--json)

if [ ! -d "$DATA" ]; then
    echo "worked_example.sh: dev-generators folder not found: $DATA (set DATA=/path/to/dev-generators)" >&2
    exit 2
fi
command -v fpt >/dev/null || { echo "worked_example.sh: no 'fpt' on PATH (activate the virtualenv)" >&2; exit 2; }

# files MODEL FROM COUNT: sorted images FROM..FROM+COUNT-1 (1-based) of DATA/MODEL
files() { find "$DATA/$1" -maxdepth 1 -type f -name '*.png' | LC_ALL=C sort | sed -n "$2,$(($2 + $3 - 1))p"; }
last() { find "$DATA/$1" -maxdepth 1 -type f -name '*.png' | LC_ALL=C sort | tail -n 1; }
# take DEST MODEL FROM COUNT: copy those images into DEST/, failing if the folder has too few
take() {
    local dest=$1 n
    mkdir -p "$dest"
    files "$2" "$3" "$4" | while IFS= read -r f; do cp "$f" "$dest/"; done
    n=$(files "$2" "$3" "$4" | wc -l)
    if [ "$n" -ne "$4" ]; then echo "worked_example.sh: $2 has fewer than $(($3 + $4 - 1)) images" >&2; exit 2; fi
}

if [ -n "${WORK:-}" ]; then
    mkdir "$WORK"
    WORK="$(cd "$WORK" && pwd)"
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/fpt-worked-example.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
fi
cd "$WORK"

# run STEP CMD...: print the command as typed, run it, keep its stdout in STEP.out; report a
# non-zero exit code on its own line (10 is an answer, anything else a failure).
run() {
    local step=$1 rc=0
    shift
    echo "\$ $*"
    "$@" | tee "$step.out" || rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "(exit code $rc)"
        [ "$rc" -eq 10 ] || exit "$rc"
    fi
}

enroll() {  # enroll MODEL: its first N images
    take "enroll/$1" "$1" 1 "$N"
    if [ "$(basename "$(last "$1")")" = "$(basename "$(files "$1" "$N" 1)")" ]; then
        echo "worked_example.sh: N=$N would enroll $1's held-out probe" >&2; exit 2
    fi
    run "enroll-$1" fpt enroll "$1" "enroll/$1" --gallery g.h5 --meta "source=dev-generators/$1"
}

for m in $MODELS; do enroll "$m"; done

mkdir -p probes
for m in $MODELS $UNENROLLED; do cp "$(last "$m")" "probes/$m.png"; done
mv "probes/$UNENROLLED.png" "probes/$UNENROLLED-NOT-ENROLLED.png"
echo "# probes: the last image of each folder in sorted order:"
for m in $MODELS $UNENROLLED; do echo "#   $m: $(basename "$(last "$m")")"; done
run identify fpt identify probes --gallery g.h5 "${JSONFLAG[@]}"

take udnie-A fst-udnie 1 "$V"
take udnie-B fst-udnie $((V + 1)) "$V"
take scream fst-scream 1 "$V"
run verify-same fpt verify udnie-A udnie-B --gallery g.h5 "${JSONFLAG[@]}"
run verify-diff fpt verify udnie-A scream --gallery g.h5 "${JSONFLAG[@]}"

if [ -n "$LINEAGE" ]; then
    for m in $LINEAGE; do enroll "$m"; done
    run lineage fpt lineage --gallery g.h5 --out lineage.png "${JSONFLAG[@]}"
fi
