#!/usr/bin/env bash
# The test command: scripts/test.sh [pytest args]   (default: tests/)
#
# 1. creates or updates the venv .venv (pip install -e '.[test]', only when the package
#    metadata changed since the last install),
# 2. brings the test services up (scripts/infra.sh up) and exports their FAICE_TEST_*
#    variables, with FAICE_TEST_INFRA=required so that a missing service fails instead of
#    skipping,
# 3. runs `ruff check .` and `pytest -q -p no:cacheprovider`.
#
# On exit the services are stopped again (scripts/infra.sh down), unless they were already
# up when this script started (somebody else is using them) or FAICE_KEEP_INFRA=1.
# The exit code is pytest's; when pytest passes but ruff fails, it is ruff's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
PYTHON=${PYTHON:-python3}
log() { printf 'test.sh: %s\n' "$*"; }

# ---------------------------------------------------------------- venv
[[ -f setup.cfg || -f pyproject.toml || -f setup.py ]] || { log "no package metadata (setup.cfg)"; exit 2; }
if [[ ! -x $VENV/bin/python ]]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp=$VENV/.faice-install-stamp
want=$({ cat setup.cfg pyproject.toml setup.py 2>/dev/null || true; } | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  log "pip install -e '.[test]'"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]' >"$VENV/pip-install.log" 2>&1 ||
    { tail -n 40 "$VENV/pip-install.log"; log "pip install failed, see $VENV/pip-install.log"; exit 1; }
  echo "$want" >"$stamp"
fi
export PATH=$PWD/$VENV/bin:$PATH

# ---------------------------------------------------------------- services
stop_infra=1
if [[ ${FAICE_KEEP_INFRA:-0} == 1 ]]; then
  stop_infra=0
elif bash scripts/infra.sh status >/dev/null 2>&1; then
  stop_infra=0 # already up before us: leave it to whoever started it
fi
cleanup() {
  if ((stop_infra)); then bash scripts/infra.sh down || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

FAICE_VENV=$PWD/$VENV bash scripts/infra.sh up
# shellcheck source=/dev/null
source "${FAICE_INFRA_DIR:-/tmp/faice-infra}/env.sh"
export FAICE_TEST_INFRA=required

# ---------------------------------------------------------------- lint + tests
ruff_rc=0
ruff check . || ruff_rc=$?
((ruff_rc == 0)) || log "ruff check failed (exit $ruff_rc); running the tests anyway"

(($# > 0)) || set -- tests/
pytest_rc=0
pytest -q -p no:cacheprovider "$@" || pytest_rc=$?
if ((pytest_rc == 5)); then
  log "FAILED: pytest collected no tests (exit 5) from: $*"
elif ((pytest_rc != 0)); then
  log "FAILED: pytest exit $pytest_rc"
elif ((ruff_rc != 0)); then
  log "FAILED: ruff check (exit $ruff_rc)"
  exit "$ruff_rc"
fi
exit "$pytest_rc"
