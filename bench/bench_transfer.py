"""Transfer throughput of faice's connectors against the native tool, over loopback.

    .venv/bin/python bench/bench_transfer.py [--size-mib 1024] [--runs 2]

Needs the test services (scripts/infra.sh up) and root (it places the test file in the
sshd user's home and the nginx root). For each connector it times a fresh
``StagingSession.stage_in`` of one random file and the floor doing the same download:

* ssh receive ÷ ``scp`` (same account, key and cipher defaults),
* http receive ÷ ``curl``,
* s3 receive ÷ boto3 ``download_file`` (default TransferConfig).

Ratio = floor time ÷ faice time (1.0 = as fast as the floor; goal ≥ 0.8). Best of
``--runs`` for each side. Writes bench/results/transfer.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "connectors"))
sys.path.insert(0, str(ROOT))


def infra() -> dict[str, str]:
    path = Path(os.environ.get("FAICE_INFRA_DIR") or "/tmp/faice-infra") / "env.json"
    values = json.loads(path.read_text())
    values.update({k: v for k, v in os.environ.items() if k.startswith("FAICE_TEST_")})
    return values


def best(runs: int, action) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def faice_receive(command: str, access: dict, workdir: Path):
    from faice.connectors.staging import ConnectorRequest, StagingSession

    def run() -> None:
        with StagingSession(workdir) as session:
            session.stage_in(ConnectorRequest("bench", command, access), "File")

    return run


def bench_ssh(env, source: Path, runs: int, scratch: Path) -> tuple[float, float]:
    user, home = env["FAICE_TEST_SSH_KEY_USER"], Path(env["FAICE_TEST_SSH_HOME_KEY_USER"])
    remote = home / "bench-transfer.bin"
    shutil.copyfile(source, remote)
    shutil.chown(remote, user, user)
    key = env["FAICE_TEST_SSH_KEY_ED25519"]
    access = {"host": env["FAICE_TEST_SSH_HOST"], "port": int(env["FAICE_TEST_SSH_PORT"]),
              "auth": {"username": user, "privateKey": Path(key).read_text()},
              "filePath": remote.name, "hostKeyPolicy": "strict",
              "knownHostsFile": env["FAICE_TEST_SSH_KNOWN_HOSTS"]}
    target = scratch / "scp.bin"

    def scp() -> None:
        subprocess.run(["scp", "-q", "-P", env["FAICE_TEST_SSH_PORT"], "-i", key, "-o", "BatchMode=yes",
                        "-o", f"UserKnownHostsFile={env['FAICE_TEST_SSH_KNOWN_HOSTS']}",
                        f"{user}@{env['FAICE_TEST_SSH_HOST']}:{remote.name}", str(target)], check=True)
        target.unlink()

    try:
        return best(runs, faice_receive("ssh", access, scratch / "w")), best(runs, scp)
    finally:
        remote.unlink(missing_ok=True)


def bench_http(env, source: Path, runs: int, scratch: Path) -> tuple[float, float]:
    remote = Path(env["FAICE_TEST_HTTP_ROOT"]) / "bench-transfer.bin"
    shutil.copyfile(source, remote)
    os.chmod(remote, 0o644)
    url = f"{env['FAICE_TEST_HTTP_URL']}/bench-transfer.bin"
    target = scratch / "curl.bin"

    def curl() -> None:
        subprocess.run(["curl", "-sf", "-o", str(target), url], check=True)
        target.unlink()

    try:
        return best(runs, faice_receive("http", {"url": url}, scratch / "w")), best(runs, curl)
    finally:
        remote.unlink(missing_ok=True)


def bench_s3(env, source: Path, runs: int, scratch: Path) -> tuple[float, float]:
    import boto3
    from botocore.config import Config

    params = {"endpoint_url": env["FAICE_TEST_S3_URL"], "region_name": env["FAICE_TEST_S3_REGION"],
              "aws_access_key_id": "bench", "aws_secret_access_key": "bench-secret"}
    client = boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **params)
    bucket = f"faice-bench-{os.getpid()}"
    client.create_bucket(Bucket=bucket)
    client.upload_file(str(source), bucket, "bench.bin")
    access = {"url": f"s3://{bucket}/bench.bin", "endpointUrl": params["endpoint_url"],
              "region": params["region_name"], "auth": {"accessKeyId": "bench", "secretAccessKey": "bench-secret"}}
    target = scratch / "boto3.bin"

    def download() -> None:
        client.download_file(bucket, "bench.bin", str(target))
        target.unlink()

    try:
        return best(runs, faice_receive("s3", access, scratch / "w")), best(runs, download)
    finally:
        client.delete_object(Bucket=bucket, Key="bench.bin")
        client.delete_bucket(Bucket=bucket)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--only", choices=["ssh", "http", "s3"], action="append")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "transfer.md")
    args = parser.parse_args()
    env = infra()
    rows = []
    with tempfile.TemporaryDirectory(prefix="faice-bench-transfer-") as tmp:
        scratch = Path(tmp)
        source = scratch / "source.bin"
        with open(source, "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(1 << 20))
        cases = [("ssh", "scp", bench_ssh), ("http", "curl", bench_http), ("s3", "boto3 download_file", bench_s3)]
        for name, floor, bench in cases:
            if args.only and name not in args.only:
                continue
            faice_s, floor_s = bench(env, source, args.runs, scratch)
            mib = args.size_mib
            rows.append((name, floor, faice_s, floor_s, mib / faice_s, mib / floor_s, floor_s / faice_s))
            print(f"{name:5} faice {faice_s:6.2f} s ({mib / faice_s:6.0f} MiB/s)   {floor:20} {floor_s:6.2f} s "
                  f"({mib / floor_s:6.0f} MiB/s)   ratio {floor_s / faice_s:.2f}", flush=True)
    lines = [
        "# Transfer throughput (receive, loopback)",
        "",
        f"{args.size_mib} MiB random file, best of {args.runs}; {platform.node()}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Ratio = floor time ÷ faice time (goal ≥ 0.8).",
        "Client and server share the same CPUs, so these are CPU-bound figures.",
        "",
        "| connector | floor | faice s | floor s | faice MiB/s | floor MiB/s | ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {n} | {f} | {a:.2f} | {b:.2f} | {c:.0f} | {d:.0f} | {r:.2f} |" for n, f, a, b, c, d, r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
