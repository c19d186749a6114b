"""Fixtures of the runtime tests: tests/support/runtime_fixtures.py.

Podman (Debian's 4.3) and Charliecloud (0.31) run for real here; Apptainer and Enroot cannot
be installed on the project's machines, so their tests drive a recording stand-in program
(see ``stand_in``) against their documented command-line contract."""

from runtime_fixtures import charliecloud, image_cache, podman, registry  # noqa: F401  (fixtures)
