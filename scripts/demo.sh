#!/usr/bin/env bash
# The main job: set up a fresh machine and run a real training sweep on the local Docker engine.
#
#   bash scripts/demo.sh [extra faice exec options]
#
# 1. creates the virtual environment .venv and installs faice into it,
# 2. installs and starts Docker (no bridge, no iptables) and builds the base image without a
#    registry (scripts/infra.sh engine; about a minute the first time),
# 3. builds the example's image on top of it (Debian's python3-numpy from the Debian mirror),
# 4. validates examples/lr-sweep/lr-sweep.red.yml (a 4 × 3 learning-rate × batch-size sweep)
#    and shows the plan (--dry-run),
# 5. runs the sweep: every batch trains a small neural network in its own container,
#    concurrently, and writes per-epoch metrics,
# 6. prints the results table, best batch first, and names the winner; then the best three
#    again from the records, as Markdown.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '\n==> %s\n' "$*"; }

VENV=.venv
if [[ ! -x $VENV/bin/faice ]]; then
  log "installing faice into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e . >"$VENV/pip-demo.log" 2>&1 ||
    { tail -n 30 "$VENV/pip-demo.log"; exit 1; }
fi
FAICE=$PWD/$VENV/bin/faice

log "Docker engine and base image"
bash scripts/infra.sh engine

log "example image faice-examples/lr-sweep"
docker build --network host -t faice-examples/lr-sweep examples/lr-sweep >"$VENV/docker-build-demo.log" 2>&1 ||
  { tail -n 30 "$VENV/docker-build-demo.log"; exit 1; }

cd examples/lr-sweep
RED=lr-sweep.red.yml
OUTDIR=$OLDPWD/faice-runs/demo-$(date +%Y%m%d-%H%M%S)

log "faice validate $RED"
"$FAICE" validate "$RED"

log "faice exec $RED --dry-run"
"$FAICE" exec "$RED" --dry-run

log "faice exec $RED --outdir $OUTDIR"
"$FAICE" exec "$RED" --outdir "$OUTDIR" "$@"

log "faice results $OUTDIR --top 3 --format markdown"
# faice exec already ended with the whole table; the records keep every batch's metrics, so
# the ranking can be read again at any time, here the best three, ready for a report.
"$FAICE" results "$OUTDIR" --top 3 --format markdown
echo
echo "run summary:      $OUTDIR/run.json"
echo "batch records:    $OUTDIR/batches/<batch id>/result.json, stdout.txt, stderr.txt"
echo "per-epoch logs:   $OUTDIR/batches/<batch id>/outputs/training.csv, final.json"
echo "as CSV:           $FAICE results $OUTDIR --format csv"
echo "another example:  examples/local/word-count.red.yml (a word count sweep), see examples/README.md"
