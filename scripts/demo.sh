#!/usr/bin/env bash
# The main job: set up a fresh machine and run a real sweep on the local Docker engine.
#
#   bash scripts/demo.sh [extra faice exec options]
#
# 1. creates the virtual environment .venv and installs faice into it,
# 2. installs and starts Docker (no bridge, no iptables) and builds the base image without a
#    registry (scripts/infra.sh engine; about a minute the first time),
# 3. validates examples/local/word-count.red.yml (a 3-batch sweep) and shows the plan (--dry-run),
# 4. runs the sweep: every batch in its own container, concurrently,
# 5. prints where the results are.
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

# The example refers to its data relative to its own folder (file connector paths).
cd examples/local
RED=word-count.red.yml
OUTDIR=$OLDPWD/faice-runs/demo-$(date +%Y%m%d-%H%M%S)

log "faice validate $RED"
"$FAICE" validate "$RED"

log "faice exec $RED --dry-run"
"$FAICE" exec "$RED" --dry-run

log "faice exec $RED --outdir $OUTDIR"
"$FAICE" exec "$RED" --outdir "$OUTDIR" "$@"

log "results"
"$FAICE" status --outdir "$OUTDIR"
echo
echo "run summary:      $OUTDIR/run.json"
echo "sent by the file connector: examples/local/results/"
echo "batch records:    $OUTDIR/batches/<batch id>/result.json, stdout.txt, stderr.txt"
echo "batch outputs:    $OUTDIR/batches/<batch id>/outputs/"
