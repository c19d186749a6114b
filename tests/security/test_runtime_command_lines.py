"""Values that reach Podman's, Charliecloud's, Apptainer's, Enroot's and Pyxis's (srun's)
command lines (issue 21): each is checked before any runtime runs (no option injection, no bind-spec separator, no
shell), and no secret ever sits on a command line where ``ps`` shows it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from runtime_helpers import faice, records, sweep_red

from faice.errors import EngineError
from faice.runtime.containers import ContainerSpec
from faice.runtime.select import process_runtime


def spec(**changes) -> ContainerSpec:
    base = ContainerSpec(image="127.0.0.1:5443/faice-test/base:bookworm", command=["true"], run_id="r", batch_id="b",
                         binds=[("/tmp/in", "/cc/inputs/x/in.txt", "ro")], name="faice-b-1")
    for key, value in changes.items():
        setattr(base, key, value)
    return base


HOSTILE = [
    ("image", "--privileged"),
    ("image", "-v/:/host"),
    ("binds", [("/tmp/in", "/cc/inputs/x/a:/etc/shadow:rw", "ro")]),  # a second bind through ':'
    ("binds", [("/tmp/in", "/cc/inputs/x/a,rw", "ro")]),  # a mount option through ','
    ("binds", [("/tmp/in:/etc", "/cc/inputs/x/in.txt", "ro")]),
    ("binds", [("-v", "/cc/x", "ro")]),
    ("binds", [("/tmp/in", "/cc/inputs/../../etc", "ro")]),
    ("binds", [("/tmp/in", "/cc/x", "rw,suid")]),
    ("workdir", "--privileged"),
    ("workdir", "/cc/outputs:/etc"),
    ("environment", {"A=B": "x"}),
    ("environment", {"--privileged": "x"}),
    ("gpu_ids", ["all,--privileged"]),
    ("gpu_ids", ["-1"]),
    ("user", "--privileged"),
    ("name", "-x"),
]


def assert_refused(runtime: str, field: str, value, cache: Path) -> None:
    """``runtime`` refuses a spec whose ``field`` is ``value``, to describe and to create, and
    has nothing running after."""
    chosen = process_runtime(runtime)
    chosen.cache = cache
    with pytest.raises(EngineError):
        chosen.describe(spec(**{field: value}))
    with pytest.raises(EngineError):
        chosen.create(spec(**{field: value}))
    assert not chosen.has_live()


@pytest.mark.parametrize("runtime", ["podman", "charliecloud", "apptainer", "enroot", "pyxis"])
@pytest.mark.parametrize(("field", "value"), HOSTILE, ids=[f"{f}={v!r}" for f, v in HOSTILE])
def test_hostile_values_never_reach_a_runtime_command_line(runtime, field, value, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # pyxis: inside a job, so only the value can be refused
    assert_refused(runtime, field, value, tmp_path)


# What srun, its SPANK plugins, Pyxis or Enroot would read as their own, not the batch's.
PYXIS_HOSTILE = [
    ("command", ["sh", "-c", "true", ":", "--container-image=/tmp/evil.sqsh", "--container-mounts=/:/host", "sh"]),
    ("environment", {"SLURM_CPU_BIND": "none"}),
    ("environment", {"SRUN_CONTAINER": "x"}),
    ("environment", {"PYXIS_CONTAINER_MOUNTS": "/:/host"}),
    ("environment", {"pyxis_container_save": "/tmp/x.sqsh"}),
    ("environment", {"SPANK_PYXIS_X": "x"}),
    ("environment", {"ENROOT_ALLOW_SUPERUSER": "y"}),
    ("image", "/tmp/a.sqsh,/:/host"),  # --container-image is one value; a path holds no ','
    ("binds", [("/tmp/in", "/cc/inputs/x/in.txt:ro,/:/host", "ro")]),  # a second --container-mounts entry
    ("name", "faice-b,x"),
]


@pytest.mark.parametrize(("field", "value"), PYXIS_HOSTILE, ids=[f"{f}={v!r}" for f, v in PYXIS_HOSTILE])
def test_hostile_values_never_steer_srun_or_pyxis(field, value, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert_refused("pyxis", field, value, tmp_path)


def test_pyxis_options_end_before_the_command_and_values_only_in_the_environment(monkeypatch):
    """A command that starts with '-' stays the command (``--`` ends srun's options); an
    environment value is never an argument, only its name is (``--container-env``)."""
    command = process_runtime("pyxis").describe(spec(command=["--container-image=/tmp/evil.sqsh", "x"],
                                                     environment={"TOKEN": "s3cret --container-mounts=/:/host"}))
    assert command.argv[command.argv.index("--") + 1:] == ["--container-image=/tmp/evil.sqsh", "x"]
    assert "--container-env=TOKEN" in command.argv and command.env["TOKEN"].startswith("s3cret")
    assert not any("s3cret" in arg for arg in command.argv)
    assert sum(a.startswith("--container-image=") for a in command.argv[:command.argv.index("--")]) == 1


def test_a_hostile_input_file_name_fails_its_batch_before_any_runtime_runs(tmp_path, monkeypatch):
    """An input file named like a bind spec (``x:/etc:rw``) would add a writable mount of the
    host's /etc on a runtime that parses ``SRC:DST:MODE``; the batch fails instead."""
    monkeypatch.setenv("FAICE_IMAGE_CACHE", str(tmp_path / "cache"))
    hostile = tmp_path / "x:,etc:rw"
    hostile.write_text("data\n")
    from runtime_helpers import Registry

    registry = Registry("127.0.0.1:5443", "u", "p", Path("/dev/null"), "127.0.0.1:5443/faice-test/base:bookworm")
    red = sweep_red(tmp_path / "r.red.json", registry, batches=1, data=hostile)
    result = faice("exec", str(red), "--runtime", "apptainer", "--dry-run")
    assert result.returncode != 0 and "bind spec" in result.stderr
    assert "x:,etc:rw" not in result.stdout


def _command_lines() -> list[str]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                    found.append(handle.read().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:
                pass
    return found


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["podman", "charliecloud"])
def test_no_secret_on_any_command_line_while_pulling_and_running(runtime, tmp_path, monkeypatch, request):
    """The registry password (pull) and a preserved variable's value (run) reach the runtime
    through its environment or a private file: ``ps`` never shows them."""
    registry = request.getfixturevalue("registry")
    request.getfixturevalue(runtime)
    monkeypatch.setenv("FAICE_IMAGE_CACHE", str(tmp_path / "cache"))
    secret = f"preserved-{os.getpid()}-value"
    monkeypatch.setenv("FAICE_TEST_RUNTIME_SECRET", secret)
    if runtime == "podman":
        import subprocess

        subprocess.run(["podman", "rmi", "--force", registry.image], capture_output=True, timeout=120)
    red = sweep_red(tmp_path / "s.red.json", registry, batches=2,
                    script='sleep 1; echo "secret arrived: ${#FAICE_TEST_RUNTIME_SECRET} chars" > result.txt')
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.extend(line for line in _command_lines() if secret in line or registry.password in line)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = faice("exec", str(red), "--runtime", runtime, "--outdir", str(tmp_path / "run"),
                       "--preserve-environment", "FAICE_TEST_RUNTIME_SECRET", "--no-progress")
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0, result.stderr[-2000:]
    assert not seen, seen[:3]
    for record in records(tmp_path / "run").values():
        output = tmp_path / "run" / "batches" / record["batchId"] / "outputs" / "result.txt"
        assert output.read_text() == f"secret arrived: {len(secret)} chars\n"
