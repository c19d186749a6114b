"""What ``faice agency serve`` was asked for: typed options the command line builds once.

The server never sees the command line's Namespace; tests and other front ends build the
same :class:`ServeOptions` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class SlurmFlags:
    """``--slurm-*`` as given (None: not given); they need ``--engine slurm``."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    python: str | None = None
    workers: int | None = None
    batches_per_worker: int | None = None
    sbatch_args: tuple[str, ...] = ()

    def given(self) -> list[str]:
        """The flags given, as spelled on the command line."""
        names = [f"--slurm-{f.name.replace('_', '-')}" for f in fields(self)
                 if f.name != "sbatch_args" and getattr(self, f.name) is not None]
        return names + (["--slurm-sbatch-arg"] if self.sbatch_args else [])


@dataclass(frozen=True)
class ServeOptions:
    """``faice agency serve``'s options (None: the server's default)."""

    db: str
    host: str = "127.0.0.1"
    port: int = 8080
    workdir: str | None = None
    secret_key_file: str | None = None
    engine: str = "local"  # local | slurm
    parallel: int | None = None
    notification_hooks: tuple[str, ...] = ()
    max_attempts: int = 2
    login_attempts: int | None = None
    block_seconds: float | None = None
    max_log_bytes: int | None = None
    paused: bool = False
    policy: str | None = None
    max_batches: int | None = None
    max_request_bytes: int | None = None
    max_red_bytes: int | None = None
    slurm: SlurmFlags = field(default_factory=SlurmFlags)
    debug: bool = False
