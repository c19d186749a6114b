"""One ssh receive of ``bench-transfer.bin`` (or --name) through faice's staging path, as a
whole process: time it against ``scp`` of the same file with any process timer, e.g.

    /usr/bin/time -v .venv/bin/python bench/ssh_receive_once.py
    /usr/bin/time -v scp -q -P PORT -i KEY -o BatchMode=yes -o UserKnownHostsFile=KNOWN \\
        faicekey@127.0.0.1:bench-transfer.bin /tmp/out.bin

Needs the test services (scripts/infra.sh up) and the file in the key user's home.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "connectors"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_transfer import infra  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="bench-transfer.bin")
    args = parser.parse_args()
    from faice.connectors.staging import ConnectorRequest, StagingSession

    env = infra()
    access = {"host": env["FAICE_TEST_SSH_HOST"], "port": int(env["FAICE_TEST_SSH_PORT"]),
              "auth": {"username": env["FAICE_TEST_SSH_KEY_USER"],
                       "privateKey": Path(env["FAICE_TEST_SSH_KEY_ED25519"]).read_text()},
              "filePath": args.name, "hostKeyPolicy": "strict",
              "knownHostsFile": env["FAICE_TEST_SSH_KNOWN_HOSTS"]}
    with tempfile.TemporaryDirectory() as work, StagingSession(Path(work)) as session:
        session.stage_in(ConnectorRequest("bench", "ssh", access), "File")
    return 0


if __name__ == "__main__":
    sys.exit(main())
