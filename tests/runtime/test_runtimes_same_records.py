"""One RED file, the same records on Docker, Podman and Charliecloud: the sweep a user moves
from a workstation (Docker) to a cluster (Podman, Charliecloud) gives the same states, stdout
and output files, with its image pulled from a registry that wants credentials."""

from __future__ import annotations

import json

import pytest
from runtime_helpers import faice, observable, records, run_on, sweep_red

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_eight_batch_registry_sweep_gives_identical_records_on_docker_podman_and_charliecloud(
        registry, podman, charliecloud, image_cache, docker_client, tmp_path):
    red = sweep_red(tmp_path / "sweep.red.json", registry)
    seen = {}
    for runtime in ("docker", "podman", "charliecloud"):
        outdir = tmp_path / runtime
        run_on(runtime, red, outdir)
        seen[runtime] = observable(outdir)
        assert {r["image"]["ref"] for r in records(outdir).values()} == {registry.image}
        # Each record names the runtime that ran it, as the dry run's plan names it.
        assert {r["runtime"] for r in records(outdir).values()} == {runtime}
        plan = faice("exec", str(red), "--runtime", runtime, "--dry-run", "--json")
        assert json.loads(plan.stdout)["runtime"] == runtime
    docker = seen["docker"]
    assert len(docker) == 8
    assert docker[3] == ("succeeded", None, 0, "batch 3 of the staged input\n", "value=21\n")
    assert seen["podman"] == docker
    assert seen["charliecloud"] == docker


def test_a_failing_batch_fails_alike_on_every_runtime(registry, podman, charliecloud, image_cache, docker_client,
                                                      tmp_path):
    red = sweep_red(tmp_path / "fail.red.json", registry, batches=2,
                    script='echo "to stderr" >&2; echo "out $0"; exit $(( $0 + 3 ))')
    seen = {}
    for runtime in ("docker", "podman", "charliecloud"):
        outdir = tmp_path / runtime
        run_on(runtime, red, outdir, exit_code=1)
        seen[runtime] = observable(outdir)
        stderr = {i: (outdir / "batches" / r["batchId"] / "stderr.txt").read_text() for i, r in records(outdir).items()}
        assert stderr == {0: "to stderr\n", 1: "to stderr\n"}, runtime
    assert seen["docker"][1] == ("failed", "exit-code", 4, "out 1\n", None)
    assert seen["podman"] == seen["docker"]
    assert seen["charliecloud"] == seen["docker"]
