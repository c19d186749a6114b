#!/usr/bin/env bash
# runtime-check.sh: an admin runs this on a real cluster node to check faice against the
# container runtimes installed there (self-checking). Apptainer, Enroot and Pyxis cannot be
# installed on faice's development machines, where they are tested against a recording
# stand-in only.
#
#   bash bench/runtime-check.sh                                  # every runtime found on PATH
#   IMAGE=docker.io/library/python:3.12-slim RUNTIMES="apptainer enroot" bash bench/runtime-check.sh
#   REGISTRY_USER=u REGISTRY_PASSWORD=p IMAGE=registry.example.org/lab/img:1 bash bench/runtime-check.sh
#   srun -N1 --gres=gpu:2 --pty bash bench/runtime-check.sh       # Pyxis: inside an allocation
#
# For each runtime (docker podman charliecloud apptainer enroot pyxis, where its program
# exists; pyxis where srun has Pyxis's --container-image and this shell runs in a Slurm job,
# each batch then a job step of it):
# 0. pyxis: the dry run shows each batch's srun --container-image command
# 1. a 4-batch sweep with a staged input: every batch succeeds with the expected stdout and
#    output file, and the image is fetched once (a second run fetches nothing)
# 2. exit code 3 is the failure class exit-code with return code 3
# 3. with ram 256, a 900 MB allocation is the failure class oom (where faice enforces ram;
#    otherwise the plan's "RAM:" note must say so)
# 4. with GPUs (nvidia-smi present): each batch of a 2-batch GPU sweep sees exactly the one
#    device its record names (nvidia-smi -L inside the container)
# 5. no secret on a command line: a preserved variable's value never shows in ps
# Output goes to the terminal and bench/results/runtime-check-<host>.txt. Exit 0: every check
# that could run passed; 1: a check failed.
set -u
cd "$(dirname "$0")/.."
PY=${FAICE_PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
IMAGE=${IMAGE:-docker.io/library/python:3.12-slim}
RUNTIMES=${RUNTIMES:-docker podman charliecloud apptainer enroot pyxis}
OUT=bench/results/runtime-check-$(hostname -s).txt
WORK=$(mktemp -d /tmp/faice-runtime-check-XXXXXX)
export FAICE_IMAGE_CACHE=${FAICE_IMAGE_CACHE:-$WORK/cache}
mkdir -p bench/results
FAILED=0
trap 'rm -rf "$WORK"' EXIT
pass() { echo "PASS  $*"; }
fail() { echo "FAIL  $*"; FAILED=1; }
skip() { echo "SKIP  $*"; }
exec > >(tee "$OUT") 2>&1
echo "faice runtime-check on $(hostname) at $(date -u +%FT%TZ), image $IMAGE"
echo "input line" >"$WORK/data.txt"

red() { # red NAME BATCHES RAM GPUS SCRIPT: a RED file on stdout's path
  "$PY" - "$WORK/$1.red.json" "$2" "$3" "$4" "$5" "$IMAGE" "$WORK/data.txt" <<'EOF'
import json, os, sys
path, batches, ram, gpus, script, image, data = sys.argv[1:]
settings = {"image": {"url": image}}
if os.environ.get("REGISTRY_USER"):
    settings["image"]["auth"] = {"username": os.environ["REGISTRY_USER"], "password": os.environ["REGISTRY_PASSWORD"]}
if int(ram):
    settings["ram"] = int(ram)
if int(gpus):
    settings["gpus"] = {"vendor": "nvidia", "count": int(gpus)}
json.dump({"redVersion": "9", "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c"],
  "inputs": {"script": {"type": "string", "inputBinding": {"position": 0}}, "n": {"type": "int", "inputBinding": {"position": 1}},
             "data": {"type": "File", "inputBinding": {"position": 2}}},
  "outputs": {"result": {"type": "File", "outputBinding": {"glob": "result.txt"}}}},
  "inputs": {"script": script, "n": 0, "data": {"class": "File", "connector": {"command": "file", "access": {"path": data}}}},
  "outputs": {}, "sweep": {"grid": {"n": list(range(int(batches)))}},
  "container": {"engine": "docker", "settings": settings}, "execution": {"engine": "ccfaice", "settings": {}}},
  open(path, "w"))
print(path)
EOF
}

records() { # records OUTDIR: "index state class code stdout|result" per batch, sorted
  "$PY" - "$1" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
found = [(json.loads(p.read_text()), p.parent) for p in out.glob("batches/*/result.json")]
for r, d in sorted(found, key=lambda item: item[0]["batchIndex"]):
    res = d / "outputs" / "result.txt"
    print(r["batchIndex"], r["state"], r["failureClass"], (r.get("process") or {}).get("returnCode"),
          (d / "stdout.txt").read_text().strip() + "|" + (res.read_text().strip() if res.exists() else "-"),
          ",".join(g.get("uuid", "") for g in r.get("gpus") or []))
EOF
}

program_of() { case $1 in charliecloud) echo ch-run ;; pyxis) echo srun ;; *) echo "$1" ;; esac; }

for RT in $RUNTIMES; do
  if ! command -v "$(program_of "$RT")" >/dev/null; then skip "$RT: $(program_of "$RT") not on PATH"; continue; fi
  if [ "$RT" = pyxis ]; then
    if ! srun --help 2>&1 | grep -q -- --container-image; then skip "pyxis: srun has no --container-image (Pyxis not installed)"; continue; fi
    if [ -z "${SLURM_JOB_ID:-}" ]; then skip "pyxis: not inside a Slurm job (run: srun -N1 --pty bash $0)"; continue; fi
    if ! command -v enroot >/dev/null; then fail "pyxis: enroot (which imports the image) is not on PATH"; continue; fi
  fi
  echo "---- $RT"
  if [ "$RT" = pyxis ]; then
    R=$(red dry 1 0 0 'true')
    if "$PY" -m faice exec "$R" --runtime pyxis --dry-run 2>&1 | grep -q -- "runtime:    srun .*--container-image=.*--container-mounts=.*:/cc/inputs/data/data.txt:ro"; then
      pass "pyxis: the dry run shows the srun --container-image command"
    else
      fail "pyxis: dry run: $("$PY" -m faice exec "$R" --runtime pyxis --dry-run 2>&1 | grep runtime: | head -1)"
    fi
  fi
  R=$(red sweep 4 0 0 'echo "batch $0 $(cat /cc/inputs/data/*)"; echo "v$(( $0 * 3 ))" > result.txt')
  if "$PY" -m faice exec "$R" --runtime "$RT" --outdir "$WORK/$RT-sweep" --no-progress >"$WORK/$RT.log" 2>&1; then
    want=$'0 succeeded None 0 batch 0 input line|v0 \n1 succeeded None 0 batch 1 input line|v3 \n2 succeeded None 0 batch 2 input line|v6 \n3 succeeded None 0 batch 3 input line|v9 '
    got=$(records "$WORK/$RT-sweep")
    [ "$got" == "$want" ] && pass "$RT: 4-batch sweep, same records as on Docker" || fail "$RT: records differ:"$'\n'"$got"
  else
    fail "$RT: sweep failed: $(tail -5 "$WORK/$RT.log")"
  fi
  if "$PY" -m faice exec "$R" --runtime "$RT" --outdir "$WORK/$RT-again" --no-progress 2>&1 | grep -q "pull:"; then
    fail "$RT: the second run fetched the image again"
  else
    pass "$RT: the second run used the prepared image"
  fi
  R=$(red exit 1 0 0 'exit 3')
  "$PY" -m faice exec "$R" --runtime "$RT" --outdir "$WORK/$RT-exit" --no-progress >/dev/null 2>&1
  [[ $(records "$WORK/$RT-exit") == "0 failed exit-code 3 "* ]] && pass "$RT: exit 3 -> exit-code 3" || fail "$RT: exit 3 -> $(records "$WORK/$RT-exit")"
  R=$(red oom 1 256 0 'exec python3 -c "x = bytearray(900 * 2**20)"')
  note=$("$PY" -m faice exec "$R" --runtime "$RT" --dry-run 2>&1 | grep '^RAM:' || true)
  if [ -n "$note" ]; then
    skip "$RT: ram not enforced here ($note)"
  else
    "$PY" -m faice exec "$R" --runtime "$RT" --outdir "$WORK/$RT-oom" --no-progress >/dev/null 2>&1
    [[ $(records "$WORK/$RT-oom") == "0 failed oom "* ]] && pass "$RT: 900 MB under ram 256 -> oom" || fail "$RT: oom -> $(records "$WORK/$RT-oom")"
  fi
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    R=$(red gpu 2 0 1 'nvidia-smi -L > result.txt; echo gpu')
    "$PY" -m faice exec "$R" --runtime "$RT" --outdir "$WORK/$RT-gpu" --no-progress >/dev/null 2>&1
    ok=$("$PY" - "$WORK/$RT-gpu" <<'EOF2'
import json, pathlib, sys
found = []
for p in pathlib.Path(sys.argv[1]).glob("batches/*/result.json"):
    r = json.loads(p.read_text()); res = p.parent / "outputs" / "result.txt"
    seen = [l for l in res.read_text().splitlines() if "UUID:" in l] if res.exists() else []
    found.append(len(seen) == 1 and r["gpus"] and r["gpus"][0]["uuid"] in seen[0])
print(1 if len(found) == 2 and all(found) else 0)
EOF2
)
    [ $ok = 1 ] && pass "$RT: each GPU batch sees exactly its own device" || fail "$RT: GPU isolation: $(cat "$WORK/$RT-gpu"/batches/*/outputs/result.txt)"
  else
    skip "$RT: no NVIDIA GPU"
  fi
  export FAICE_CHECK_SECRET="check-$$-secret"
  R=$(red secret 1 0 0 'sleep 2; echo ${#FAICE_CHECK_SECRET} > result.txt')
  "$PY" -m faice exec "$R" --runtime "$RT" --preserve-environment FAICE_CHECK_SECRET --outdir "$WORK/$RT-secret" --no-progress >/dev/null 2>&1 &
  pid=$! leaked=0
  while kill -0 $pid 2>/dev/null; do
    grep -qs "$FAICE_CHECK_SECRET" /proc/[0-9]*/cmdline && leaked=1
    sleep 0.05
  done
  [ $leaked = 0 ] && pass "$RT: no secret on any command line" || fail "$RT: the secret showed in ps"
done
echo "result: $([ $FAILED = 0 ] && echo PASS || echo FAIL) (log $OUT)"
exit $FAILED
