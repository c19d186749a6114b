"""No value from a RED file reaches a command line unvalidated (issue 12, item 2): sbatch
options from ``execution.settings``, the image reference, external connector program names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from faice.connectors.registry import check_command_name, resolve
from faice.connectors.staging import ConnectorRequest, StagingSession
from faice.engines.slurm.job import job_script
from faice.engines.slurm.settings import SlurmSettings, sbatch_options
from faice.errors import ConnectorError, EngineError, ValidationError, format_key_path
from faice.red.experiment import Experiment


def slurm_experiment(settings: dict) -> Experiment:
    return Experiment("hostile.red.yml", {
        "redVersion": "9", "cli": {},
        "container": {"engine": "docker", "settings": {"image": {"url": "python:3.12"}}},
        "execution": {"engine": "slurm", "settings": settings},
    }, [])


HOSTILE_SETTINGS = [
    ("partition", "debug --wrap=touch /tmp/pwned"),
    ("partition", "--wrap=id"),
    ("partition", "debug\n#SBATCH --output=/etc/cron.d/x"),
    ("account", "-Aroot"),
    ("qos", "normal;id"),
    ("time", "01:00:00 --uid=0"),
    ("time", "--begin=now"),
    ("python", "python3 -c 'import os; os.system(\"id\")'"),
    ("python", "../../bin/sh"),
    ("python", "-c"),
    ("runDir", "/shared/runs\n--output=/x"),
    # Packing (issue 14): numbers only, within bounds; they size sbatch's --array and --mem.
    ("workers", "2 --wrap=id"),
    ("workers", 10**9),
    ("workers", True),
    ("batchesPerWorker", -1),
    ("batchesPerWorker", 100000),
    ("leaseSeconds", "60; id"),
    ("pollInterval", float("nan")),
    ("pollInterval", 0),
]


@pytest.mark.parametrize(("key", "value"), HOSTILE_SETTINGS)
def test_hostile_slurm_settings_are_refused_with_their_key_path(key, value):
    with pytest.raises(ValidationError) as info:
        SlurmSettings.from_experiment(slurm_experiment({key: value}))
    assert f"hostile.red.yml: execution.settings.{key}: expected" in str(info.value)


@pytest.mark.parametrize("arg", [
    "--constraint=a100\n--output=/etc/passwd",  # a newline: a second option
    "-o/etc/passwd",  # short options are not accepted
    "--output=/root/.bashrc",  # faice's own options stay faice's
    "--wrap=id",
    "--job-name=x",
    "--array=0-100000",
    "--chdir=/",
    "constraint=a100",
    "--constraint a100",  # two words in one item
    "--con\x00straint",
])
def test_hostile_extra_args_are_refused(arg):
    with pytest.raises(ValidationError) as info:
        SlurmSettings.from_experiment(slurm_experiment({"extraArgs": ["--exclusive", arg]}))
    assert "execution.settings.extraArgs[1]" in str(info.value)


def test_good_settings_still_become_sbatch_options_and_a_quoted_script():
    settings = SlurmSettings.from_experiment(slurm_experiment({
        "partition": "gpu,debug", "account": "proj-1", "qos": "high", "time": "1-12:00:00",
        "python": "/opt/faice env/bin/python", "extraArgs": ["--constraint=a100&nvlink", "--exclusive"]}))
    options = sbatch_options(settings, {}, job_name="faice-r", array="0-1", output="/o/%a.out", workdir="/o")
    assert options[-2:] == ["--constraint=a100&nvlink", "--exclusive"]
    assert "--partition=gpu,debug" in options and "--time=1-12:00:00" in options
    from pathlib import Path

    script = job_script(settings, Path("/runs/x y"), "r1")
    assert "exec '/opt/faice env/bin/python' -m" in script and "'/runs/x y'" in script
    assert SlurmSettings.from_experiment(slurm_experiment({"python": "python3"})).python == "python3"
    packed = SlurmSettings.from_experiment(slurm_experiment({"python": "/opt/faice env/bin/python", "workers": 2}))
    script = job_script(packed, Path("/runs/x y;id"), "r1")
    assert "exec '/opt/faice env/bin/python' -m faice.engines.slurm.worker '/runs/x y;id'\n" in script


@pytest.mark.parametrize("ref", ["--help", "python:3.12 --privileged", "python:3.12\n", "../../etc", "a" * 600,
                                 "python:3.12;id", "$(id)", "ubuntu@sha256:short"])
def test_hostile_image_references_are_refused_before_docker(tmp_path, ref):
    from faice.pipeline.plan import plan_batches
    from faice.runtime.docker import ensure_image

    experiment = Experiment("hostile.red.yml", {
        "redVersion": "9", "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": "true",
                                   "inputs": {}, "outputs": {}},
        "container": {"engine": "docker", "settings": {"image": {"url": ref}}}}, [])
    with pytest.raises(EngineError, match="container.settings.image.url: .* is not an image reference"):
        plan_batches(experiment)

    class NoDocker:  # a client that fails the test if Docker were asked
        def __getattr__(self, name):
            raise AssertionError(f"docker called with {ref!r}")

    with pytest.raises(EngineError, match="is not an image reference"):
        ensure_image(NoDocker(), ref)


@pytest.mark.parametrize("command", ["-rf", "sh -c id", "cat\n", "../bin/sh", "./connector", "bin/sh",
                                     "/usr/bin/../bin/sh", "", "x" * 300])
def test_hostile_connector_command_names_are_refused(command):
    assert check_command_name(command) is not None or command == ""
    if command:
        with pytest.raises(ConnectorError, match="neither a connector name|is a path"):
            resolve(command)


def test_program_paths_only_where_the_policy_lists_them(tmp_path):
    assert check_command_name("red-connector-x") is None
    assert check_command_name("/usr/bin/true") is None  # local default: the user's own machine
    assert "only these program paths" in check_command_name("/usr/bin/true", ["/opt/conn/bin/get"])
    assert check_command_name("/opt/conn/bin/get", ["/opt/conn/bin/get"]) is None
    session = StagingSession(tmp_path / "s", allowed_programs=[])
    with pytest.raises(ConnectorError, match="is a path"):
        session.validate(ConnectorRequest("inputs.f", "/bin/sh", {}), "receive-file")
    session.close()


# ---------------------------------------------------------------- local --policy (item 1)


def _run_faice(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faice", *args], capture_output=True, text=True, timeout=120)


def _file_red(tmp_path, path: str, *, sweep: bool = False, name: str = "r.json") -> str:
    red = {
        "redVersion": "9",
        "cli": {"cwlVersion": "v1.0", "class": "CommandLineTool", "baseCommand": "cat",
                "inputs": {"f": {"type": "File", "inputBinding": {"position": 0}}}, "outputs": {}},
        "inputs": {"f": {"class": "File", "connector": {"command": "file", "access": {"path": path}}}},
        "outputs": {},
        "container": {"engine": "docker", "settings": {"image": {"url": "python:3.12"}}},
        "execution": {"engine": "ccfaice", "settings": {}},
    }
    if sweep:
        red["cli"]["inputs"]["n"] = {"type": "int", "inputBinding": {"position": 1}}
        red["inputs"]["n"] = 0
        red["sweep"] = {"grid": {"n": [1, 2]}}
    target = tmp_path / name
    target.write_text(json.dumps(red))
    return str(target)


def test_local_policy_refuses_with_the_agencys_key_paths(tmp_path):
    allowed = tmp_path / "data"
    allowed.mkdir()
    (allowed / "in.txt").write_text("x")
    policy = tmp_path / "policy.yml"
    policy.write_text(f"fileRoots: [{allowed}]\n")
    red = _file_red(tmp_path, "/etc/shadow")
    for command in (["validate", red], ["exec", red, "--outdir", str(tmp_path / "run")]):
        done = _run_faice(*command, "--policy", str(policy))
        assert done.returncode == 1, done.stderr
        assert "inputs.f.connector.access.path: host path '/etc/shadow' is not under an allowed root" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # refused before anything ran
    # without --policy the local user keeps their freedom; with it, allowed paths pass
    assert _run_faice("validate", red).returncode == 0
    good = _file_red(tmp_path, str(allowed / "in.txt"), name="good.json")
    assert _run_faice("validate", good, "--policy", str(policy)).returncode == 0
    as_json = json.loads(_run_faice("validate", red, "--policy", str(policy), "--json").stdout)
    assert as_json["valid"] is False and as_json["problems"][0]["path"] == "inputs.f.connector.access.path"


def test_local_policy_names_the_batch_of_a_sweep_and_external_programs(tmp_path):
    policy = tmp_path / "policy.yml"
    policy.write_text("connectors: [http]\n")
    red = _file_red(tmp_path, "/etc/hostname", sweep=True)
    done = _run_faice("exec", red, "--dry-run", "--policy", str(policy))
    assert done.returncode == 1
    assert "batches[1].inputs.f.connector.command: connector 'file' is not allowed" in done.stderr
    bad_policy = tmp_path / "bad.yml"
    bad_policy.write_text("fileRoot: [/]\n")
    done = _run_faice("validate", red, "--policy", str(bad_policy))
    assert done.returncode == 2 and "unknown key 'fileRoot'" in done.stderr


VALIDATED_EXTRA_ARGS = ["--constraint=a100\n--output=/etc/passwd", "-o/etc/passwd", "constraint=a100",
                        "--constraint a100", "--con\x00straint"]
TEXT_SETTINGS = [(key, value) for key, value in HOSTILE_SETTINGS if isinstance(value, str) and key not in
                 ("workers", "leaseSeconds")] + [("extraArgs", [arg]) for arg in VALIDATED_EXTRA_ARGS]


@pytest.mark.parametrize(("key", "value"), TEXT_SETTINGS)
def test_faice_validate_refuses_what_sbatch_would_read_as_an_option_at_its_line(key, value, tmp_path):
    """validate passed a partition '--wrap=id' (or a newline in runDir, extraArgs '-o…') that
    only exec refused, without a line: the schema has the same patterns now. (faice's own
    options in extraArgs, --wrap=… and --output=…, stay exec's check.)"""
    from faice.red.load import load_mapping
    from faice.red.validate import validate_red

    path = tmp_path / "slurm.red.json"
    red = json.loads((Path(__file__).resolve().parents[1] / "data" / "red" / "valid" / "minimal.json").read_text())
    red["execution"] = {"engine": "slurm", "settings": {key: value}}
    path.write_text(json.dumps(red, indent=1))
    with pytest.raises(ValidationError) as info:
        validate_red(load_mapping(str(path)))
    where = f"execution.settings.{key}" + ("[0]" if key == "extraArgs" else "")
    problem = next(p for p in info.value.problems if format_key_path(p.path) == where)
    assert problem.line is not None and problem.message.startswith("expected"), problem
