"""A stopped batch ends promptly: the runtime starts an init process as the container's PID 1.

The kernel drops a SIGTERM sent to a PID 1 that has no handler for it, and ``sh -c ...`` or
``python3 ...`` as PID 1 has none: without an init (``docker run --init``, ``podman run
--init``) every stop (early stopping, cancel, timeout) waited out the whole grace period and
ended in SIGKILL, which made ASHA cost as many batch-seconds as the grid it should beat."""

from __future__ import annotations

import time
import uuid

import pytest

pytestmark = [pytest.mark.slow]

GRACE = 10.0
PROGRAMS = {
    "sh": ["sh", "-c", "sleep 30"],
    "python": ["python3", "-c", "import time\nwhile True: time.sleep(0.1)"],
}


def stop_seconds(runtime, image: str, command: list[str]) -> tuple[float, int]:
    """Start ``command`` in a container, stop it with :data:`GRACE`; how long the stop took
    and the container's exit code."""
    from faice.runtime.containers import ContainerSpec

    run_id = f"test-stop-{uuid.uuid4().hex[:8]}"
    spec = ContainerSpec(image=image, command=command, run_id=run_id, batch_id=f"{run_id}-0",
                         name=f"{run_id}-0", workdir="/")
    handle = runtime.create(spec)
    try:
        output = runtime.attach(handle)
        runtime.start(handle)
        assert runtime.wait(handle, 2.0) is None, "the program ended by itself"
        began = time.monotonic()
        runtime.stop(handle, GRACE)
        code = runtime.wait(handle, GRACE + 30)
        took = time.monotonic() - began
        for _ in output:
            pass
        assert code is not None
        return took, code
    finally:
        runtime.remove(handle)


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_a_stopped_docker_batch_ends_well_within_the_grace(docker_client, test_image, program):
    from faice.runtime.docker import DockerRuntime

    runtime = DockerRuntime.connect()
    try:
        runtime.ensure_image(test_image, pull="never")  # the image must be there
        took, code = stop_seconds(runtime, test_image, PROGRAMS[program])
    finally:
        runtime.close()
    assert took < GRACE / 3, f"the stop took {took:.1f} s of a {GRACE:.0f} s grace: SIGTERM did not reach {program}"
    assert code == 143, code  # ended by SIGTERM, not by the SIGKILL after the grace


@pytest.mark.parametrize("program", sorted(PROGRAMS))
@pytest.mark.parametrize("name", ["podman", "charliecloud"])
def test_a_stopped_command_line_batch_ends_well_within_the_grace(request, registry, image_cache, name, program):
    """Podman by its ``--init``; Charliecloud's ``ch-run`` makes no PID namespace and execs the
    program, which gets the SIGTERM faice sends to the batch's process group."""
    from faice.runtime.select import process_runtime

    request.getfixturevalue(name)  # skips (or fails) where the runtime is not installed
    runtime = process_runtime(name)
    try:
        image, _ = runtime.ensure_image(registry.image, auth={"username": registry.user, "password": registry.password})
        took, code = stop_seconds(runtime, image.id or registry.image, PROGRAMS[program])
    finally:
        runtime.close()
    assert took < GRACE / 3, f"the stop took {took:.1f} s of a {GRACE:.0f} s grace: SIGTERM did not reach {program}"
    assert code == 143, code
