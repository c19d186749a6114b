"""How to run batches: built once (from the CLI or a server's settings) and carried as data.

``RunOptions`` travels to Slurm tasks and the agency runner as a plain dict
(:meth:`RunOptions.to_dict` / :meth:`RunOptions.from_dict`), so every engine runs a batch
with the same options and no engine needs special cases to rebuild them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faice.connectors.api import HostIdentity
from faice.errors import UsageError
from faice.runtime.private_images import PrivateImages

# When the image is pulled: only when it is not present (default), before every run (a moved
# tag such as ``:latest`` is noticed), or never (upstream's ``--disable-pull``).
PULL_POLICIES = ("missing", "always", "never")


@dataclass
class RunOptions:
    parallel: int | None = None
    fail_fast: bool = False
    max_failures: int | None = None
    retries: int = 0
    timeout: float | None = None
    gpu_ids: str | None = None
    gpu_busy: str = "skip"  # skip | wait | ignore: devices with processes faice did not start
    pull: str = "missing"  # one of PULL_POLICIES
    disable_pull: bool = False  # upstream's flag, kept as an alias of pull="never"
    leave_container: bool = False
    preserve_environment: list[str] = field(default_factory=list)
    disable_connector_validation: bool = False
    resume: bool = False
    stop_grace: float = 2.0
    allowed_programs: list[str] | None = None  # --policy's externalPrograms (None: no policy)
    # Whether the account's own identity serves a batch that brings none: docker's stored
    # registry logins and the AWS credential chain. True for a local run (the user's own);
    # False on an agency, whose account is not the user's.
    account_credentials: bool = True
    known_hosts: str | None = None  # ssh host keys without knownHostsFile (None: faice's own file)
    # The record of images pulled with a batch's registry credentials (an agency's; None: none
    # kept): such an image is lent to another batch only if its registry accepts that batch.
    private_images: str | None = None
    runtime: str | None = None  # --runtime: the container runtime instead of the RED file's container.engine
    # Where batches that run apart share their objective series for ``metrics.earlyStopping``
    # (``live/``, ``batches/``): an agency's Slurm runner gives one per experiment, so batches
    # of separate Slurm submissions are compared; None: a packed run's own submission.
    stopping_dir: str | None = None

    def __post_init__(self) -> None:
        if self.disable_pull:
            self.pull = "never"
        if self.pull not in PULL_POLICIES:
            raise UsageError(f"--pull: expected one of {', '.join(PULL_POLICIES)}, not {self.pull!r}")
        if self.parallel is not None and self.parallel < 1:
            raise UsageError("--parallel: expected a number ≥ 1")
        if self.retries < 0:
            raise UsageError("--retries: expected a number ≥ 0")
        if self.timeout is not None and self.timeout <= 0:
            raise UsageError("--timeout: expected a number of seconds > 0")
        if self.max_failures is not None and self.max_failures < 1:
            raise UsageError("--max-failures: expected a number ≥ 1")
        if self.runtime is not None:
            from faice.runtime.select import check_runtime_name

            check_runtime_name(self.runtime)
        if self.gpu_busy not in ("skip", "wait", "ignore"):
            raise UsageError(f"--gpu-busy: expected skip, wait or ignore, got {self.gpu_busy!r}")

    def host_identity(self) -> HostIdentity:
        """What connectors may use beyond each access (see :class:`HostIdentity`)."""
        from pathlib import Path

        return HostIdentity(Path(self.known_hosts) if self.known_hosts else None, self.account_credentials)

    def image_record(self) -> PrivateImages | None:
        from pathlib import Path

        return PrivateImages(Path(self.private_images)) if self.private_images else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunOptions:
        """Options stored by another faice (unknown keys from newer versions are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def runtime_for(self, engine: str) -> str:
        """The runtime a batch runs in: ``--runtime``, else its RED file's ``container.engine``."""
        return self.runtime or engine

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)


@dataclass
class ExecRequest:
    """What ``faice exec`` asked for, beyond the run options every engine shares."""

    options: RunOptions = field(default_factory=RunOptions)
    outdir: Path | None = None
    dry_run: bool = False
    json: bool = False
    wait: bool = False  # agency/slurm: follow until every batch is final
    progress: bool = True  # False: plain lines instead of a live display
    disable_retry: bool = False  # agency: ask the server not to retry failed batches
