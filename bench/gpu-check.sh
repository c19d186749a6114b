#!/usr/bin/env bash
# gpu-check.sh: checks faice's GPU placement on a real NVIDIA machine (self-checking).
#
#   bash bench/gpu-check.sh            # from the repository root, faice installed in .venv or on PATH
#   FAICE_PY=/path/to/python IMAGE=nvidia/cuda:12.4.1-base-ubuntu22.04 bash bench/gpu-check.sh
#
# 1. inventory: faice's NVML (or nvidia-smi) inventory equals `nvidia-smi --query-gpu`
# 2. busy devices: a process this script starts on one GPU (torch or cupy; skipped without
#    them) makes faice skip that device (allocator and `faice exec --dry-run`)
# 3. a 4-batch sweep: `faice exec --dry-run` gives concurrent batches distinct devices, and a
#    shared/vram sweep packs batches without over-committing any device's memory
# 4. a container on the device (only where Docker has the nvidia runtime): the batch sees
#    exactly the device named by its record's UUID
# Output goes to the terminal and bench/results/gpu-check-<host>.txt. Exit 0: every check that
# could run passed; 1: a check failed; 2: no NVIDIA GPU here.
set -u
cd "$(dirname "$0")/.."
PY=${FAICE_PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
IMAGE=${IMAGE:-nvidia/cuda:12.4.1-base-ubuntu22.04}
OUT=bench/results/gpu-check-$(hostname -s).txt
WORK=$(mktemp -d /tmp/faice-gpu-check-XXXXXX)
mkdir -p bench/results
FAILED=0
BUSY_PID=
cleanup() { [ -n "$BUSY_PID" ] && kill "$BUSY_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
pass() { echo "PASS  $*"; }
fail() { echo "FAIL  $*"; FAILED=1; }
skip() { echo "SKIP  $*"; }

echo "faice gpu-check on $(hostname) at $(date -u +%FT%TZ)"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no NVIDIA GPU (nvidia-smi missing or failing): nothing to check here"; exit 2
fi
exec > >(tee "$OUT") 2>&1
nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version --format=csv
"$PY" -c 'import pynvml' 2>/dev/null && echo "NVML: nvidia-ml-py installed" || echo "NVML: not installed (faice uses nvidia-smi; pip install faice[gpu] for NVML)"
unset FAICE_GPU_INVENTORY CUDA_VISIBLE_DEVICES

# ---------------------------------------------------------------- 1. inventory
"$PY" - <<'PY' > "$WORK/inventory.json" || fail "inventory: faice could not read the GPUs"
import json
from faice.runtime.gpus import detect_gpus, device_processes
print(json.dumps({"gpus": [g.describe() for g in detect_gpus()],
                  "processes": {u: [p.pid for p in ps] for u, ps in device_processes().items()}}))
PY
cat "$WORK/inventory.json"
SMI_UUIDS=$(nvidia-smi --query-gpu=uuid --format=csv,noheader | tr -d ' ' | sort | paste -sd,)
FAICE_UUIDS=$("$PY" -c 'import json,sys; print(",".join(sorted(g["uuid"] for g in json.load(open(sys.argv[1]))["gpus"])))' "$WORK/inventory.json")
[ "$SMI_UUIDS" = "$FAICE_UUIDS" ] && pass "inventory: $FAICE_UUIDS" || fail "inventory: faice $FAICE_UUIDS, nvidia-smi $SMI_UUIDS"
"$PY" -c 'import json,sys; d=json.load(open(sys.argv[1]))["gpus"]; sys.exit(0 if all(g["driver"] and g["name"] and g["vram"] > 0 for g in d) else 1)' "$WORK/inventory.json" \
  && pass "inventory: name, VRAM and driver version of every device" || fail "inventory: a device lacks name, VRAM or driver"

# ---------------------------------------------------------------- REDs
"$PY" - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
def red(gpus, n, script="true", image="debian:bookworm-slim"):
    return {"redVersion": "9",
            "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c", script],
                    "inputs": {"n": {"type": "int", "inputBinding": {"position": 0}}}, "outputs": {}, "stdout": "out.txt"},
            "inputs": {"n": 0}, "outputs": {}, "sweep": {"grid": {"n": list(range(n))}},
            "container": {"engine": "docker", "settings": {"image": {"url": image}, "gpus": gpus}},
            "execution": {"engine": "ccfaice", "settings": {}}}
json.dump(red({"vendor": "nvidia", "count": 1}, 4), open(f"{work}/sweep4.json", "w"))
json.dump(red({"vendor": "nvidia", "count": 1, "vram": 2000, "shared": True}, 4), open(f"{work}/shared4.json", "w"))
import os
json.dump(red({"vendor": "nvidia", "count": 1}, 1, "nvidia-smi -L", os.environ.get("IMAGE", "nvidia/cuda:12.4.1-base-ubuntu22.04")),
          open(f"{work}/container.json", "w"))
PY

# ---------------------------------------------------------------- 2. busy device
FIRST_UUID=$(echo "$SMI_UUIDS" | cut -d, -f1)
BUSY_CODE='import time, sys
try:
    import torch; x = torch.ones(1, device="cuda:0"); print("torch", flush=True)
except ImportError:
    import cupy; x = cupy.ones(1); print("cupy", flush=True)
time.sleep(120)'
if "$PY" -c 'import torch' 2>/dev/null || "$PY" -c 'import cupy' 2>/dev/null; then
  CUDA_VISIBLE_DEVICES=$FIRST_UUID "$PY" -c "$BUSY_CODE" > "$WORK/busy.log" 2>&1 &
  BUSY_PID=$!
  for _ in $(seq 60); do nvidia-smi --query-compute-apps=pid --format=csv,noheader | grep -qw "$BUSY_PID" && break; sleep 1; done
  "$PY" - "$FIRST_UUID" <<'PY' && pass "busy: the device running this script's process is skipped" || fail "busy: not detected"
import sys
from faice.runtime.gpus import GpuRequest, host_allocator
allocator = host_allocator(None)
busy = [g.uuid for g in allocator.busy_devices()]
print("busy devices:", busy)
placed = allocator.try_acquire(GpuRequest((0,)))
print("placed:", [g.uuid for g in placed or []])
sys.exit(0 if sys.argv[1] in busy and sys.argv[1] not in [g.uuid for g in placed or []] else 1)
PY
  "$PY" -m faice exec "$WORK/sweep4.json" --dry-run --json > "$WORK/busy-plan.json" \
    && "$PY" -c 'import json,sys; p=json.load(open(sys.argv[1])); b=[d for d in p["gpuDevices"] if d["uuid"]==sys.argv[2]][0]; print(b); sys.exit(0 if b["busy"] and not b["batches"] else 1)' "$WORK/busy-plan.json" "$FIRST_UUID" \
    && pass "busy: the dry run shows the device busy and places nothing on it" || fail "busy: dry-run plan"
  kill "$BUSY_PID"; wait "$BUSY_PID" 2>/dev/null; BUSY_PID=
else
  skip "busy: neither torch nor cupy importable by $PY, so no CUDA process can be started"
fi

# ---------------------------------------------------------------- 3. a 4-batch sweep
"$PY" -m faice exec "$WORK/sweep4.json" --dry-run > "$WORK/plan.txt" && cat "$WORK/plan.txt"
"$PY" -m faice exec "$WORK/sweep4.json" --dry-run --json > "$WORK/plan.json" && "$PY" - "$WORK/plan.json" <<'PY' && pass "sweep: concurrent batches get distinct devices" || fail "sweep: allocation"
import json, sys
plan = json.load(open(sys.argv[1]))
first = [tuple(b["gpus"]) for b in plan["batches"][: plan["parallel"]]]
print("parallel", plan["parallel"], "first wave", first, "note", plan["gpuNote"])
free = sum(not d["busy"] for d in plan["gpuDevices"])
sys.exit(0 if len(set(first)) == len(first) == min(4, free) and not plan["gpuNote"] else 1)
PY
"$PY" -m faice exec "$WORK/shared4.json" --dry-run --json > "$WORK/shared.json" && "$PY" - "$WORK/shared.json" <<'PY' && pass "sweep: shared batches packed within each device's VRAM" || fail "sweep: packing"
import json, sys
plan = json.load(open(sys.argv[1]))
for d in plan["gpuDevices"]:
    print(d["index"], d["name"], f'{d["reserved"]}/{d["vram"]} MiB', d["batches"])
sys.exit(0 if all(d["reserved"] <= d["vram"] for d in plan["gpuDevices"]) and plan["parallel"] >= 1 else 1)
PY

# ---------------------------------------------------------------- 4. a container on the device
if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then
  if "$PY" -m faice exec "$WORK/container.json" --outdir "$WORK/run" --no-progress; then
    "$PY" - "$WORK/run" <<'PY' && pass "container: the batch saw exactly its recorded device" || fail "container: device mismatch"
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
(record,) = [json.loads(p.read_text()) for p in run.glob("batches/*/result.json")]
seen = "".join(p.read_text() for p in run.glob("batches/*/outputs/out.txt"))
print("record gpus:", record["gpus"]); print("nvidia-smi -L in the container:", seen.strip())
uuid = record["gpus"][0]["uuid"]
sys.exit(0 if uuid in seen and seen.count("UUID:") == 1 and record["gpus"][0]["driver"] else 1)
PY
  else
    fail "container: faice exec of $IMAGE failed"
  fi
else
  skip "container: Docker has no nvidia runtime here (install nvidia-container-toolkit)"
fi

echo; [ "$FAILED" = 0 ] && echo "gpu-check: all checks that could run passed" || echo "gpu-check: FAILED"
exit "$FAILED"
