"""``faice agency serve`` and ``faice agency user add``: the CC-Agency-compatible server."""

from __future__ import annotations

from faice.cli.options import add_debug
from faice.cli.parser import new_command

DEFAULT_DB = "sqlite:///faice-agency.db"


def add_parser(subparsers) -> None:
    agency = new_command(subparsers, "agency", help="run a CC-Agency-compatible server and manage its users")
    commands = agency.add_subparsers(title="actions", metavar="ACTION")

    serve = new_command(
        commands,
        "serve",
        help="serve the CC-Agency 9.3 REST API",
        examples="  faice agency serve --db sqlite:///agency.db --host 127.0.0.1 --port 8080",
    )
    serve.add_argument("--db", default=DEFAULT_DB, help=f"database URL: sqlite:///PATH or postgresql://... (default: {DEFAULT_DB})")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    serve.add_argument("--workdir", metavar="DIR", help="where batch run directories are kept (default: next to the database)")
    serve.add_argument("--engine", choices=("local", "slurm"), default="local", help="where batches run (default: local)")
    serve.add_argument("--parallel", type=int, help="batches at a time on this host (default: CPU count); with --engine slurm: batches kept submitted to Slurm at once (default: 32)")
    serve.add_argument("--secret-key-file", metavar="FILE", help="key that encrypts secrets at rest (default: created next to the database, mode 0600)")
    serve.add_argument("--notification-hook", metavar="URL", action="append", default=[], help="POST final batch states to this URL; repeatable")
    serve.add_argument("--max-attempts", metavar="N", type=int, default=2, help="attempts per batch unless the client disabled retries (default: 2, like CC-Agency)")
    serve.add_argument("--login-attempts", metavar="N", type=int, default=5, help="failed logins tolerated before a user is blocked (default: 5)")
    serve.add_argument("--block-seconds", metavar="S", type=float, default=60, help="failure window and block duration in seconds (default: 60)")
    serve.add_argument("--max-log-bytes", metavar="N", type=int, help="stdout/stderr bytes kept per batch stream; older output is cut with a marker (default: $FAICE_AGENCY_LOG_CAP or 4 MiB)")
    slurm = serve.add_argument_group("Slurm (with --engine slurm; --workdir must be on a filesystem the compute nodes share)")
    slurm.add_argument("--slurm-partition", metavar="NAME", help="sbatch --partition for every batch")
    slurm.add_argument("--slurm-account", metavar="NAME", help="sbatch --account")
    slurm.add_argument("--slurm-qos", metavar="NAME", help="sbatch --qos")
    slurm.add_argument("--slurm-time", metavar="LIMIT", help='sbatch --time per batch, e.g. "02:00:00"')
    slurm.add_argument("--slurm-python", metavar="PATH", help="the Python with faice installed on the nodes (default: the server's)")
    slurm.add_argument("--slurm-workers", metavar="K", type=int, help="pack each experiment's batches into one job array of at most K worker allocations that pull them from a queue (default: one Slurm job per batch)")
    slurm.add_argument("--slurm-batches-per-worker", metavar="N", type=int, help="with --slurm-workers: batches one worker runs at once (its allocation is sized for N; default: 1)")
    slurm.add_argument("--slurm-sbatch-arg", metavar="ARG", action="append", default=[], help="another sbatch option as one word, e.g. --slurm-sbatch-arg=--constraint=a100; repeatable")
    serve.add_argument("--paused", action="store_true", help="accept and store experiments but start no batch")
    serve.add_argument("--policy", metavar="FILE", help="connector policy (YAML/JSON; see docs/agency.md); default: no file paths, no external connector programs, no s3 without auth")
    serve.add_argument("--max-batches", metavar="N", type=int, help="batches one experiment may have, sweeps counted before expansion (default: 10000)")
    serve.add_argument("--max-request-bytes", metavar="N", type=int, help="largest request body; larger ones get 413 (default: 64 MiB)")
    serve.add_argument("--max-red-bytes", metavar="N", type=int, help="largest experiment as stored, sweeps expanded (default: 256 MiB)")
    add_debug(serve)
    serve.set_defaults(run=_action("serve"))

    user = new_command(commands, "user", help="manage agency users")
    user_commands = user.add_subparsers(title="user actions", metavar="ACTION")
    add = new_command(
        user_commands,
        "add",
        help="create a user (or replace its password)",
        examples="  echo \"$PW\" | faice agency user add alice --db sqlite:///agency.db --password-stdin",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--db", default=DEFAULT_DB, help=f"database URL, as for serve (default: {DEFAULT_DB})")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin (else prompt)")
    add.add_argument("--admin", action="store_true", help="the user sees and cancels everyone's work")
    add_debug(add)
    add.set_defaults(run=_action("user-add"))


def _action(name: str):
    def run(args) -> int:
        return {"serve": _serve, "user-add": _user_add}[name](args)

    return run


def _serve(args) -> int:
    from faice.agency.options import ServeOptions, SlurmFlags
    from faice.agency.server import serve

    slurm = SlurmFlags(
        partition=args.slurm_partition, account=args.slurm_account, qos=args.slurm_qos, time=args.slurm_time,
        python=args.slurm_python, workers=args.slurm_workers, batches_per_worker=args.slurm_batches_per_worker,
        sbatch_args=tuple(args.slurm_sbatch_arg or ()),
    )
    return serve(ServeOptions(
        db=args.db, host=args.host, port=args.port, workdir=args.workdir, secret_key_file=args.secret_key_file,
        engine=args.engine, parallel=args.parallel, notification_hooks=tuple(args.notification_hook or ()),
        max_attempts=args.max_attempts, login_attempts=args.login_attempts, block_seconds=args.block_seconds,
        max_log_bytes=args.max_log_bytes, paused=args.paused, policy=args.policy, max_batches=args.max_batches,
        max_request_bytes=args.max_request_bytes, max_red_bytes=args.max_red_bytes, slurm=slurm,
        debug=bool(getattr(args, "debug", False)),
    ))


def _user_add(args) -> int:
    import getpass
    import sys

    from faice.agency.auth import add_user
    from faice.agency.db import Database
    from faice.errors import UsageError

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"Password for {args.name}: ")
        if password != getpass.getpass("Repeat it: "):
            raise UsageError("the passwords differ")
    if not password:
        raise UsageError("the password must not be empty")
    db = Database(args.db)
    try:
        add_user(db, args.name, password, admin=args.admin)
    finally:
        db.close()
    print(f"user {args.name} saved{' (admin)' if args.admin else ''}", file=sys.stderr)
    return 0
