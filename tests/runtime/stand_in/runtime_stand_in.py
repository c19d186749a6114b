"""A recording stand-in for ``apptainer``, ``enroot`` and Pyxis's ``srun`` (none installs on
the project's machines): it appends its argv and environment to ``$FAICE_STAND_IN_LOG`` and acts out the
documented contract just enough for faice to run a batch through it:

* ``apptainer pull [--force] FILE URI`` / ``enroot import --output FILE URI``: writes FILE;
* ``apptainer exec … --bind SRC:/cc/outputs:rw …`` / ``enroot start … --mount SRC:/cc/outputs:…``:
  prints a line, writes ``result.txt`` into the host side of ``/cc/outputs`` and exits with
  the code in the file ``stand-in-exit`` beside the log (default 0);
* ``srun … --container-mounts=SRC:/cc/outputs:rw,… -- COMMAND``: the same (the text of the file
  ``stand-in-stderr`` beside the log, if any, goes to stderr: Slurm's words for an OOM kill).

faice gives a runtime a clean environment, so the log's path is written into the installed
copy of this program (``LOG = …`` before this text), not passed as a variable.

It is NOT Apptainer, Enroot or Pyxis: the tests that use it say so, and bench/runtime-check.sh checks
the real programs on a cluster node."""

import json
import os
import sys
from pathlib import Path

LOG = globals().get("LOG") or os.environ["FAICE_STAND_IN_LOG"]
argv = [Path(sys.argv[0]).name, *sys.argv[1:]]
with open(LOG, "a", encoding="utf-8") as log:
    log.write(json.dumps({"argv": argv, "env": dict(os.environ)}) + "\n")
args = argv[1:]
if argv[0] == "srun":
    for arg in args[:args.index("--")]:
        if arg.startswith("--container-mounts="):
            for entry in arg.split("=", 1)[1].split(","):
                if entry.split(":")[1] == "/cc/outputs":
                    Path(entry.split(":")[0], "result.txt").write_text("from the stand-in\n")
    print("srun stand-in ran the batch")
    stderr = Path(LOG).with_name("stand-in-stderr")
    if stderr.exists():
        print(stderr.read_text(), file=sys.stderr)
    code = Path(LOG).with_name("stand-in-exit")
    sys.exit(int(code.read_text()) if code.exists() else 0)
if args[:1] == ["pull"]:
    Path([a for a in args[1:] if not a.startswith("-")][0]).write_text("a SIF stand-in\n")
elif args[:1] == ["import"]:
    Path(args[args.index("--output") + 1]).write_text("a SquashFS stand-in\n")
elif args[:1] in (["exec"], ["start"]):
    flag = "--bind" if args[0] == "exec" else "--mount"
    for position, arg in enumerate(args[:-1]):
        if arg == flag and args[position + 1].split(":")[1] == "/cc/outputs":
            Path(args[position + 1].split(":")[0], "result.txt").write_text("from the stand-in\n")
    print(f"{argv[0]} stand-in ran the batch")
    code = Path(LOG).with_name("stand-in-exit")
    sys.exit(int(code.read_text()) if code.exists() else 0)
