#!/usr/bin/env python3
"""Write the Machine Learning Guide experiment as a RED 8 JSON file with explicit batches.

This is the upstream way (Curious Containers' guide generated its learning-rate batches
with a script like this one). faice runs the result unchanged, and so does upstream faice
8.x; with faice, local.red.yml's `sweep:` does the same without a script.

    python3 generate-red.py --host data.example.org --port 22 > red.json
    faice exec red.json --variables vars.yml --disable-pull

The SSH username and password stay {{variables}} (filled at run time, never stored). Host
and port are written literally because RED 8 variables can only produce strings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CWL_FILE = Path(__file__).with_name("cnn-training.cwl.yml")


def load_cli() -> dict:
    """The CWL tool, read from cnn-training.cwl.yml (needs PyYAML or ruamel.yaml)."""
    text = CWL_FILE.read_text()
    try:
        from ruamel.yaml import YAML

        return json.loads(json.dumps(YAML(typ="safe").load(text)))
    except ImportError:
        import yaml

        return yaml.safe_load(text)


def ssh_access(host: str, port: int, **path: str) -> dict:
    return {
        "host": host,
        "port": port,
        "auth": {"username": "{{ssh_username}}", "password": "{{ssh_password}}"},
        **path,
    }


def batch(index: int, learning_rate: float, args: argparse.Namespace) -> dict:
    def directory(dir_path: str, writable: bool = False) -> dict:
        access = ssh_access(args.host, args.port, dirPath=dir_path)
        if writable:
            access["writable"] = True
        return {"class": "Directory", "connector": {"command": "red-connector-ssh", "mount": True, "access": access}}

    return {
        "inputs": {
            "training_data": directory(f"{args.base_dir}/pcam"),
            "learning_rate": learning_rate,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "log_dir": directory(f"{args.base_dir}/logs", writable=True),
            "log_file_name": f"training_{index}_lr{learning_rate}.log",
        },
        "outputs": {
            "weights_file": {
                "class": "File",
                "connector": {
                    "command": "red-connector-ssh",
                    "access": ssh_access(args.host, args.port, filePath=f"{args.base_dir}/weights/weights_lr{learning_rate}.h5"),
                },
            }
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="SSH server that holds the dataset and receives logs and weights")
    parser.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    parser.add_argument("--base-dir", default="ml-guide", help="directory on the server, relative to the SSH home (default ml-guide)")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[0.0001, 0.001])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image", default="faice-examples/ml-guide")
    parser.add_argument("--ram", type=int, default=2048, help="memory limit in MB (default 2048)")
    parser.add_argument("--gpus", type=int, default=0, help="NVIDIA GPUs per batch (default 0)")
    args = parser.parse_args()

    settings: dict = {"image": {"url": args.image}, "ram": args.ram}
    if args.gpus:
        settings["gpus"] = {"vendor": "nvidia", "count": args.gpus}
    red = {
        "redVersion": "8",
        "cli": load_cli(),
        "batches": [batch(i, lr, args) for i, lr in enumerate(args.learning_rates)],
        "container": {"engine": "docker", "settings": settings},
        "execution": {"engine": "ccfaice", "settings": {}},
    }
    json.dump(red, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
