"""Scale: many trivial batches on one host, and many clients of one agency server.

Run: .venv/bin/python bench/bench_scale.py [--image faice-test/base:bookworm] [--sizes 100,300,1000]
     [--clients 20] [--per-client 10] [--skip-agency] [--skip-growth]
(writes bench/results/scale.md and scale.json). Needs the Docker engine and the image.

(a) 200 trivial batches at ``--parallel 4``: ``faice exec`` wall ÷ ``xargs -P 4 docker run --rm``
    (the same 200 containers without faice)                                   goal ≤ 0.8
(b) 100 → 1,000 trivial batches: wall time per batch and faice's peak RSS (``wait4``
    ru_maxrss of the whole faice process)                      goal: linear time, flat memory
(c) agency: ``--clients`` threads each posting ``--per-client`` experiments of one trivial
    batch to a real local ``faice agency serve --parallel 4``: all accepted and final, none
    lost, none run twice (exactly one ``processing`` entry in each batch's history); the
    server's time per batch under that load vs ``faice exec`` of the same batches, and the
    idle-server latency of one batch (submit → final) vs ``faice exec`` of it.
Each size is measured once (a few minutes in all); the machine's noise shows in repeated runs.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import faice_red  # noqa: E402


def measured(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS MiB) of one whole process; a failing run aborts the benchmark."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(argv)}\n{err.decode()[-2000:]}")
    return seconds, usage.ru_maxrss // 1024


def faice_exec(work: Path, image: str, count: int) -> tuple[float, int]:
    red = faice_red(work / f"sweep{count}.json", image, count)
    outdir = work / f"run{count}"
    shutil.rmtree(outdir, ignore_errors=True)
    result = measured([sys.executable, "-m", "faice", "exec", str(red), "--parallel", "4", "--no-progress",
                       "--outdir", str(outdir)], work)
    shutil.rmtree(outdir, ignore_errors=True)
    return result


def api_floor(work: Path, image: str, count: int) -> float:
    """docker_api_floor.py: the engine calls faice makes per container, and nothing else."""
    return measured([sys.executable, str(Path(__file__).parent / "docker_api_floor.py"), image, str(count)], work)[0]


def xargs_docker(work: Path, image: str, count: int) -> float:
    script = (f"seq {count} | xargs -P 4 -I{{}} docker run --rm --label org.faice.bench=1 "
              f"--entrypoint sh {image} -c true {{}}")
    return measured(["sh", "-c", script], work)[0]


# ----------------------------------------------------------------------------- agency


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agency_red(url: str, user: str, password: str, image: str, value: str) -> dict[str, Any]:
    return {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": ["sh", "-c", "true"],
                "inputs": {"v": {"type": "string", "inputBinding": {"position": 0}}}, "outputs": {}},
        "inputs": {"v": value},
        "outputs": {},
        "container": {"engine": "docker", "settings": {"image": {"url": image}, "ram": 256}},
        "execution": {"engine": "ccagency", "settings": {"access": {"url": url, "auth": {"username": user, "password": password}}}},
    }


def _t(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else datetime.fromisoformat(str(value)).timestamp()


def agency_bench(work: Path, image: str, clients: int, per_client: int) -> dict[str, Any]:
    from faice.agency.auth import add_user
    from faice.agency.db import Database

    db_url = f"sqlite:///{work}/agency.db"
    user, password = "bench", secrets.token_hex(12)
    Database(db_url)  # creates the schema
    db = Database(db_url)
    try:
        add_user(db, user, password, admin=False)
    finally:
        db.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "agency.log", "ab")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen([sys.executable, "-m", "faice", "agency", "serve", "--db", db_url, "--host", "127.0.0.1",
                               "--port", str(port), "--parallel", "4"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            try:
                requests.get(url + "/", timeout=1)
                break
            except requests.ConnectionError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("agency did not start: " + (work / "agency.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        auth = (user, password)
        # warm-up: one batch (image lookup, first container)
        warm = requests.post(url + "/red", json=agency_red(url, user, password, image, "warm"), auth=auth, timeout=60)
        warm.raise_for_status()
        _wait_final(url, auth, [warm.json()["experimentId"]])

        accepted: list[str] = []
        rejected: list[str] = []
        lock = threading.Lock()

        def client(n: int) -> None:
            with requests.Session() as session:
                session.auth = auth
                for k in range(per_client):
                    r = session.post(url + "/red", json=agency_red(url, user, password, image, f"c{n}-e{k}"), timeout=120)
                    with lock:
                        (accepted if r.status_code == 200 else rejected).append(
                            r.json()["experimentId"] if r.status_code == 200 else f"{r.status_code} {r.text[:200]}")

        started = time.time()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        submitted = time.time() - started
        batches = _wait_final(url, auth, accepted, timeout=1800)
        loaded_wall = time.time() - started
        succeeded = sum(b["state"] == "succeeded" for b in batches)
        twice = [b["_id"] for b in batches if sum(h["state"] == "processing" for h in b["history"]) != 1]
        per_experiment = {}
        for b in batches:
            per_experiment[b["experimentId"]] = per_experiment.get(b["experimentId"], 0) + 1

        # idle latency: one batch at a time, submit -> final (history), five times
        latencies, inside = [], []
        for i in range(5):
            r = requests.post(url + "/red", json=agency_red(url, user, password, image, f"idle{i}"), auth=auth, timeout=60)
            r.raise_for_status()
            (batch,) = _wait_final(url, auth, [r.json()["experimentId"]])
            times = {h["state"]: _t(h["time"]) for h in batch["history"]}
            latencies.append(times["succeeded"] - times.get("registered", _t(batch["registrationTime"])))
            inside.append(times["succeeded"] - times["processing"])
        return {
            "experiments": clients * per_client, "accepted": len(accepted), "rejected": rejected,
            "batches": len(batches), "succeeded": succeeded, "lost": clients * per_client - len(batches),
            "ranTwice": twice, "batchesPerExperiment": sorted(set(per_experiment.values())),
            "submitSeconds": round(submitted, 2), "wallSeconds": round(loaded_wall, 2),
            "idleLatency": round(statistics.median(latencies), 3), "idleProcessing": round(statistics.median(inside), 3),
        }
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _wait_final(url: str, auth: tuple[str, str], experiment_ids: list[str], timeout: float = 120) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        batches = requests.get(url + "/batches", auth=auth, params={"limit": 100000}, timeout=60).json()
        wanted = [b for b in batches if b["experimentId"] in set(experiment_ids)]
        if len(wanted) >= len(experiment_ids) and all(b["state"] in ("succeeded", "failed", "cancelled") for b in wanted):
            return wanted
        if time.time() > deadline:
            raise SystemExit(f"agency batches not final after {timeout}s")
        time.sleep(0.5)


# ----------------------------------------------------------------------------- main


def table(results: dict[str, Any]) -> list[str]:
    """The markdown rows of whatever parts ``results`` holds."""
    rows = []
    if "throughput" in results:
        t = results["throughput"]
        rows.append(f"| 200 trivial batches, `--parallel 4` | {t['faice']:.1f} s (median of {t['pairs']}) | "
                    f"`xargs -P 4 docker run --rm` {t['xargs']:.1f} s | {t['ratio']:.2f} (pairs: "
                    f"{', '.join(f'{r:.2f}' for r in t['ratios'])}) | ≤ 0.8 {'✔' if t['ratio'] <= 0.8 else '✘'} |")
        if "apiFloor" in t:
            rows.append(f"| the same, against the engine calls alone | {t['faice']:.1f} s | `docker_api_floor.py` (create, "
                        f"attach, start, wait, remove; nothing else) {t['apiFloor']:.1f} s, which is "
                        f"{t['apiFloorVsXargs']:.2f} of `xargs` | {t['overApiFloor']:.2f} | — |")
    if "growth" in results:
        growth = results["growth"]
        first, last = growth[0], growth[-1]
        time_ratio = last["perBatch"] / first["perBatch"]
        rss_ratio = last["rssMiB"] / first["rssMiB"]
        text = "; ".join(f"{g['batches']}: {g['seconds']:.1f} s, {g['rssMiB']} MiB" for g in growth)
        rows.append(f"| {first['batches']} → {last['batches']} trivial batches | {text} | — | time per batch ×{time_ratio:.2f}, "
                    f"peak RSS ×{rss_ratio:.2f} | linear time, flat memory {'✔' if time_ratio <= 1.25 and rss_ratio <= 1.5 else '✘'} |")
    if "agency" in results:
        a = results["agency"]
        total = a["experiments"]
        ok = (a["accepted"] == total and a["succeeded"] == total and not a["lost"]
              and not a["ranTwice"] and a["batchesPerExperiment"] == [1])
        rows.append(f"| agency: {a['clients']} clients × {a['perClient']} experiments of 1 trivial batch | "
                    f"{a['accepted']}/{total} accepted, {a['succeeded']} succeeded, {a['lost']} lost, "
                    f"{len(a['ranTwice'])} run twice; {a['wallSeconds']:.1f} s | `faice exec` of the same "
                    f"{total} batches {a['execSameBatches']:.1f} s | {a['overheadPerBatch'] * 1000:+.0f} ms per batch | "
                    f"all final, none lost or twice {'✔' if ok else '✘'} |")
        rows.append(f"| agency: one batch on an idle server, submit → final | {a['idleLatency']:.2f} s "
                    f"(container part {a['idleProcessing']:.2f} s) | `faice exec` of it {a['execOneBatch']:.2f} s | "
                    f"{a['idleLatency'] / a['execOneBatch']:.2f} | — |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="faice-test/base:bookworm")
    parser.add_argument("--pairs", type=int, default=3, help="xargs/faice pairs of (a), alternated (default 3)")
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-agency", action="store_true")
    parser.add_argument("--skip-growth", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    saved = RESULTS / "scale.json"
    results: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    results.update({"cpus": os.cpu_count()})
    results.setdefault("when", {})
    with tempfile.TemporaryDirectory(prefix="faice-bench-scale-") as tmp:
        work = Path(tmp)
        faice_exec(work, args.image, 4)  # warm: tool check remembered, image inspected
        if not args.skip_throughput:
            load = os.getloadavg()[0]
            pairs = []
            floors = []
            for _ in range(args.pairs):
                docker = xargs_docker(work, args.image, 200)
                floor = api_floor(work, args.image, 200)
                faice, rss = faice_exec(work, args.image, 200)
                pairs.append((faice, docker, rss))
                floors.append(floor)
                print(f"200 batches: faice {faice:.1f} s, xargs {docker:.1f} s, docker-py floor {floor:.1f} s", flush=True)
            ratios = [f / d for f, d, _ in pairs]
            results["throughput"] = {
                "faice": round(statistics.median(f for f, _, _ in pairs), 2),
                "xargs": round(statistics.median(d for _, d, _ in pairs), 2),
                "apiFloor": round(statistics.median(floors), 2),
                "ratio": round(statistics.median(ratios), 2), "ratios": [round(r, 2) for r in ratios],
                "overApiFloor": round(statistics.median(f / a for (f, _, _), a in zip(pairs, floors, strict=True)), 2),
                "apiFloorVsXargs": round(statistics.median(a / d for (_, d, _), a in zip(pairs, floors, strict=True)), 2),
                "pairs": len(pairs), "rssMiB": max(r for _, _, r in pairs), "loadavg": [round(load, 1), round(os.getloadavg()[0], 1)]}
            results["when"]["throughput"] = time.strftime("%Y-%m-%d %H:%M")
        if not args.skip_growth:
            load = os.getloadavg()[0]
            growth = []
            for size in [int(s) for s in args.sizes.split(",")]:
                seconds, rss = faice_exec(work, args.image, size)
                growth.append({"batches": size, "seconds": round(seconds, 2), "perBatch": round(seconds / size, 4), "rssMiB": rss})
                print(growth[-1], flush=True)
            results["growth"] = growth
            results["when"]["growth"] = f"{time.strftime('%Y-%m-%d %H:%M')} (load {load:.1f})"
        if not args.skip_agency:
            load = os.getloadavg()[0]
            agency = agency_bench(work, args.image, args.clients, args.per_client)
            total = args.clients * args.per_client
            exec_total, _ = faice_exec(work, args.image, total)
            exec_one = statistics.median(faice_exec(work, args.image, 1)[0] for _ in range(3))
            agency.update({"clients": args.clients, "perClient": args.per_client,
                           "execSameBatches": round(exec_total, 2), "execOneBatch": round(exec_one, 3),
                           "overheadPerBatch": round((agency["wallSeconds"] - exec_total) / total, 4)})
            results["agency"] = agency
            results["when"]["agency"] = f"{time.strftime('%Y-%m-%d %H:%M')} (load {load:.1f})"
    saved.write_text(json.dumps(results, indent=2) + "\n")
    rows = ["| what | faice | floor / peer | ratio | goal |", "| --- | --- | --- | --- | --- |", *table(results)]
    when = ", ".join(f"{k} {v}" for k, v in results["when"].items())
    (RESULTS / "scale.md").write_text(f"# Scale ({results['cpus']} CPUs; measured: {when})\n\n" + "\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
