"""The least a client of the Docker engine can do per trivial container: the five calls
faice makes (create, attach, start, wait, remove) from one Python process, ``--parallel``
at a time, and nothing else (no records, no logs written, no checks).

    python bench/docker_api_floor.py IMAGE COUNT [--parallel 4]

``bench_scale.py`` times it as a whole process beside ``faice exec`` and ``xargs docker run``:
faice ÷ this is what faice itself adds; this ÷ ``xargs`` is what the engine leaves to win.
"""

from __future__ import annotations

import argparse
import threading
from concurrent.futures import ThreadPoolExecutor

import docker


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("count", type=int)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    api = docker.APIClient(version="auto")

    def one(n: int) -> None:
        created = api.create_container(args.image, ["sh", "-c", "true", str(n)], labels={"org.faice.bench": "1"},
                                       host_config=api.create_host_config())
        container = created["Id"]
        output = api.attach(container, stdout=True, stderr=True, stream=True, demux=True)
        reader = threading.Thread(target=lambda: sum(1 for _ in output))
        reader.start()
        api.start(container)
        code = api.wait(container)["StatusCode"]
        reader.join()
        api.remove_container(container, force=True, v=True)
        if code != 0:
            raise SystemExit(f"container {n} exited {code}")

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(one, range(args.count)))


if __name__ == "__main__":
    main()
