#!/usr/bin/env bash
# The test command: scripts/test.sh [pytest args]   (default: tests/)
#
# 1. creates or updates a venv per Python (pip install -e '.[test]', only when the package
#    metadata changed since the last install): .venv from `python3` (or $PYTHON), and for the
#    whole suite also .venv-debian from Debian 12's own /usr/bin/python3, the README's platform
#    (skipped when it is the same interpreter as the first),
# 2. brings the test services up (scripts/infra.sh up) and exports their FAICE_TEST_*
#    variables, with FAICE_TEST_INFRA=required so that a missing service fails instead of
#    skipping,
# 3. runs `ruff check .` and `mypy` once, then pytest: the whole suite on Debian's Python (on
#    the first when Debian's is not among them), and on every other Python the tests that need
#    no test service (`-m "not services"`, marked at collection in tests/conftest.py): a
#    service behaves the same whatever Python drives it, and running those twice doubled CI's
#    time. It ends with one line adding them up: "total: N passed, N failed[, N skipped]".
#
# FAICE_TEST_PYTHONS="python3 /usr/bin/python3" chooses the interpreters; the default is both
# for the whole suite (no arguments, what CI runs) and only the first for a part.
# FAICE_TEST_EVERYWHERE=1 runs the whole suite on every Python.
# On exit the services are stopped again (scripts/infra.sh down), unless they were already
# up when this script started (somebody else is using them) or FAICE_KEEP_INFRA=1.
# The exit code is the first failing pytest's; when all pass but ruff fails, it is ruff's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
DEBIAN_PYTHON=/usr/bin/python3
log() { printf 'test.sh: %s\n' "$*"; }

# ---------------------------------------------------------------- venvs
[[ -f setup.cfg || -f pyproject.toml || -f setup.py ]] || { log "no package metadata (setup.cfg)"; exit 2; }
if [[ -n ${FAICE_TEST_PYTHONS:-} ]]; then
  read -r -a pythons <<<"$FAICE_TEST_PYTHONS"
elif (($# == 0)) && [[ -x $DEBIAN_PYTHON ]]; then
  pythons=("$PYTHON" "$DEBIAN_PYTHON")
else
  pythons=("$PYTHON")
fi

# The venv for interpreter $1 (number $2): .venv-debian for Debian's, .venv for the first
# other, else .venv-<n>.
venv_name() {
  if [[ $1 == "$DEBIAN_PYTHON" ]]; then echo .venv-debian
  elif [[ $2 == 0 ]]; then echo .venv
  else echo ".venv-$2"; fi
}

# Create or update venv $1 from interpreter $2.
prepare_venv() {
  local venv=$1 python=$2 stamp want
  if [[ ! -x $venv/bin/python ]]; then
    log "creating $venv ($python)"
    "$python" -m venv "$venv"
  fi
  stamp=$venv/.faice-install-stamp
  want=$({ cat setup.cfg pyproject.toml setup.py 2>/dev/null || true; } | sha256sum | cut -d' ' -f1)
  if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    log "pip install -e '.[test]' into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -e '.[test]' >"$venv/pip-install.log" 2>&1 ||
      { tail -n 40 "$venv/pip-install.log"; log "pip install failed, see $venv/pip-install.log"; exit 1; }
    echo "$want" >"$stamp"
  fi
}

venvs=() seen=() preparing=()
for i in "${!pythons[@]}"; do
  python=${pythons[$i]}
  command -v "$python" >/dev/null || { log "no interpreter $python"; exit 2; }
  real=$("$python" -c 'import os, sys; print(os.path.realpath(sys.executable), sys.version.split()[0])')
  if [[ " ${seen[*]} " == *" ${real%% *} "* ]]; then
    log "$python is ${real%% *} again: one run for it"
    continue
  fi
  seen+=("${real%% *}")
  venv=$(venv_name "$python" "$i")
  if ((${#venvs[@]} == 0)); then
    prepare_venv "$venv" "$python"
  else # the other interpreters' venvs are made while the services start
    prepare_log=$(mktemp)
    prepare_venv "$venv" "$python" >"$prepare_log" 2>&1 &
    preparing+=("$!:$prepare_log")
  fi
  venvs+=("$venv")
done
VENV=${venvs[0]}
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
for job in "${preparing[@]}"; do
  prepared=0
  wait "${job%%:*}" || prepared=$?
  cat "${job#*:}"
  rm -f "${job#*:}"
  ((prepared == 0)) || exit "$prepared"
done
# shellcheck source=/dev/null
source "${FAICE_INFRA_DIR:-/tmp/faice-infra}/env.sh"
export FAICE_TEST_INFRA=required

# ---------------------------------------------------------------- lint + tests
ruff_rc=0
ruff check . || ruff_rc=$?
((ruff_rc == 0)) || log "ruff check failed (exit $ruff_rc); running the tests anyway"
mypy_rc=0
mypy || mypy_rc=$?
((mypy_rc == 0)) || log "mypy failed (exit $mypy_rc); running the tests anyway"

whole_suite=0
(($# > 0)) || { whole_suite=1; set -- tests/; }
# The venv that runs everything: Debian's where it is one of them, else the first.
full_venv=${venvs[0]}
for venv in "${venvs[@]}"; do [[ $venv != .venv-debian ]] || full_venv=$venv; done
# "passed failed skipped" from JUnit report $1 (pytest's own closing line depends on -q/-v).
counts() {
  "$VENV/bin/python" -c '
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    raise SystemExit("0 0 0")
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
n = {k: sum(int(x.get(k, 0)) for x in suites) for k in ("tests", "failures", "errors", "skipped")}
print(n["tests"] - n["failures"] - n["errors"] - n["skipped"], n["failures"] + n["errors"], n["skipped"])
' "$1" 2>&1 || true
}
passed=0 failed=0 skipped=0 pytest_rc=0 summaries=()
for venv in "${venvs[@]}"; do
  subset=()
  if ((whole_suite)) && [[ $venv != "$full_venv" && ${FAICE_TEST_EVERYWHERE:-0} != 1 ]]; then
    subset=(-m "not services")
  fi
  version=$("$venv/bin/python" -c 'import platform; print(platform.python_version())')
  ((${#venvs[@]} == 1)) || log "---- pytest with Python $version ($venv)${subset[*]:+: the tests that need no service}"
  rc=0
  rm -f "$venv/pytest.xml"
  PATH=$PWD/$venv/bin:$PATH VIRTUAL_ENV=$PWD/$venv "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    --junitxml="$venv/pytest.xml" "${subset[@]}" "$@" || rc=$?
  read -r p f s <<<"$(counts "$venv/pytest.xml")"
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
  summaries+=("Python $version ($venv): $p passed, $f failed, $s skipped (pytest exit $rc)")
  if ((rc == 5)); then
    log "FAILED: pytest collected no tests (exit 5) from: $*"
  elif ((rc != 0)); then
    log "FAILED: pytest exit $rc with Python $version"
  fi
  ((pytest_rc != 0)) || pytest_rc=$rc
done
if ((${#venvs[@]} > 1)); then
  for summary in "${summaries[@]}"; do log "$summary"; done
fi
if ((pytest_rc == 0 && ruff_rc != 0)); then
  log "FAILED: ruff check (exit $ruff_rc)"
  pytest_rc=$ruff_rc
fi
if ((pytest_rc == 0 && mypy_rc != 0)); then
  log "FAILED: mypy (exit $mypy_rc)"
  pytest_rc=$mypy_rc
fi
total="total: $passed passed, $failed failed"
((skipped == 0)) || total+=", $skipped skipped"
echo "$total"
exit "$pytest_rc"
