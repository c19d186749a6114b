"""Values that reach a container runtime's command line, checked before they get there.

Podman, Charliecloud, Apptainer and Enroot are driven through their command lines, and the
image reference, bind paths, working directory and environment names come from a RED file,
possibly someone else's (the agency). Each value must stay one argument meaning one thing:
no value may start with ``-`` (read as an option), a bind's parts may not hold the separator
of the bind spec (``:`` or ``,``), nothing may hold a newline or NUL. No runtime is ever
started through a shell, and environment values never appear as arguments (each runtime
passes them through its own environment), so they are not restricted here.
"""

from __future__ import annotations

import re

from faice.errors import EngineError
from faice.runtime.containers import ContainerSpec, check_image_ref

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPEC_SEPARATORS = (":", ",")


def check_path(value: str, what: str, *, container: bool = False) -> None:
    """An absolute path that stays one part of a bind spec (``SRC:DST[:ro]``)."""
    if not value.startswith("/"):
        raise EngineError(f"{what}: {value[:200]!r} is not an absolute path")
    bad = [c for c in (*_SPEC_SEPARATORS, "\n", "\0", "=") if c in value]
    if bad:
        raise EngineError(f"{what}: {value[:200]!r} holds {bad[0]!r}, which a container runtime's bind "
                          "spec would read as a separator")
    if container and any(part == ".." for part in value.split("/")):
        raise EngineError(f"{what}: {value[:200]!r} leaves its directory ('..')")


def check_spec(spec: ContainerSpec) -> None:
    """Every value of ``spec`` that a runtime's command line will hold (raises EngineError)."""
    bad_ref = check_image_ref(spec.image) if not spec.image.startswith("/") else None
    if bad_ref:
        raise EngineError(f"container.settings.image.url: {bad_ref}")
    if spec.image.startswith("/"):
        check_path(spec.image, "image path")
    for host, target, mode in spec.binds:
        check_path(host, "bind source")
        check_path(target, "bind target", container=True)
        if mode not in ("ro", "rw"):
            raise EngineError(f"bind mode {mode!r}: expected ro or rw")
    check_path(spec.workdir, "working directory", container=True)
    for name in spec.environment:
        if not ENV_NAME.fullmatch(name):
            raise EngineError(f"environment variable name {name[:100]!r}: expected letters, digits and _ "
                              "(not starting with a digit)")
    for gpu in spec.gpu_ids:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", gpu):
            raise EngineError(f"GPU id {gpu[:100]!r}: expected an index or a UUID")
    if spec.user is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?",
                                                  spec.user):
        raise EngineError(f"user {spec.user[:100]!r}: expected NAME or UID[:GID]")
    if spec.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", spec.name):
        raise EngineError(f"container name {spec.name[:100]!r}: expected letters, digits, _ . -")
